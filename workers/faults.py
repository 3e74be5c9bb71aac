"""Which faults are worth retrying (transient) and which are permanent.

A transient fault (a connection drop, a Redis that is loading, busy with a script or
out of memory) heals without anyone touching the run: retrying later is right. A
permanent one (a corrupt or missing artifact, a history that breaks the contract)
never heals by itself: retrying it silently would loop forever, so it must be recorded
and end the state (and then the run). Refused credentials or permissions are neither: they
do not heal by themselves (so they are never retried), but they are the deployment's fault,
not the run's, so they are reported and never recorded as a state failure.
"""

from __future__ import annotations

import redis
from redis import exceptions as rx

from mfm_dist.errors import ConcurrencyError, Corruption, MfmError, NotFound, StorageError
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.stores.redis_events import SERVER_BUSY_ERRORS, is_auth_failure, is_server_busy

LEASE_LOST = "attempt_lease_lost"
AUTH_FAILED = "storage_auth_failed"

_TRANSIENT_REDIS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    rx.ReadOnlyError,
    *SERVER_BUSY_ERRORS,
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
        return is_server_busy(exc)
    return isinstance(exc, MfmError) and exc.info.retryable


def _auth_one(exc: BaseException) -> bool:
    return is_auth_failure(exc) or (isinstance(exc, MfmError) and exc.info.code == AUTH_FAILED)


def is_auth_fault(exc: BaseException) -> bool:
    """True if a backend refused our credentials or a permission (anywhere in the chain).

    Checked first everywhere: redis-py's `AuthenticationError` is a `ConnectionError`, and a
    `storage_auth_failed` error keeps the redis exception as its context."""
    return any(_auth_one(e) for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """True for faults that heal by themselves (retry later, keep the run going)."""
    chain = _chain(exc)
    if any(_auth_one(e) for e in chain):
        return False
    return any(_transient_one(e) for e in chain)


def is_permanent_storage_fault(exc: BaseException) -> bool:
    """A storage fault that no retry can fix (corrupt or missing data)."""
    if is_auth_fault(exc):
        return False  # the deployment's credentials, not the run's data
    if isinstance(exc, Corruption | NotFound):
        return not is_transient(exc)
    if not isinstance(exc, StorageError) or isinstance(exc, GuardViolation | ConcurrencyError):
        return False
    if exc.info.code == LEASE_LOST:
        return False
    return not is_transient(exc)
