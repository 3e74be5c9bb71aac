"""Which faults are worth retrying (transient) and which are permanent.

A transient fault (a connection drop, a Redis that is loading, busy with a script or
out of memory) heals without anyone touching the run: retrying later is right. A
permanent one (a corrupt or missing artifact, a history that breaks the contract)
never heals by itself: retrying it silently would loop forever, so it must be recorded
and end the state (and then the run).
"""

from __future__ import annotations

import redis
from redis import exceptions as rx

from mfm_dist.errors import ConcurrencyError, Corruption, MfmError, NotFound, StorageError
from mfm_dist.stores.guards import GuardViolation

LEASE_LOST = "attempt_lease_lost"

_TRANSIENT_REDIS = (
    redis.ConnectionError,
    redis.TimeoutError,
    rx.BusyLoadingError,
    rx.OutOfMemoryError,
    rx.ReadOnlyError,
    rx.TryAgainError,
    rx.MasterDownError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes/contexts (`raise … from None` still keeps `__context__`)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 8:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (*_TRANSIENT_REDIS, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, redis.ResponseError):
        return str(exc).startswith(("BUSY", "LOADING", "OOM", "TRYAGAIN", "MASTERDOWN"))
    return isinstance(exc, MfmError) and exc.info.retryable


def is_transient(exc: BaseException) -> bool:
    """True for faults that heal by themselves (retry later, keep the run going)."""
    return any(_transient_one(e) for e in _chain(exc))


def is_permanent_storage_fault(exc: BaseException) -> bool:
    """A storage fault that no retry can fix (corrupt or missing data)."""
    if isinstance(exc, Corruption | NotFound):
        return not is_transient(exc)
    if not isinstance(exc, StorageError) or isinstance(exc, GuardViolation | ConcurrencyError):
        return False
    if exc.info.code == LEASE_LOST:
        return False
    return not is_transient(exc)
