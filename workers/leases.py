"""Redis coordination primitives of a distributed run: attempt leases, the per-run
coordinator lock, dispatch reservations, the recorded plan fingerprint and the
watchdog de-duplication key.

All keys of a run share the hash tag `{<run_id>}` with the event store's keys:

* `mfm:{rid}:plan` — the plan fingerprint recorded at submission;
* `mfm:{rid}:lease:<state_id>` — `"<attempt>:<token>:<worker>"` while a worker runs that attempt
  (`SET NX PX`; renewed and released only by the holder: compare-and-pexpire/-delete);
* `mfm:{rid}:lock` — the coordinator lock (token, compare-and-delete);
* `mfm:{rid}:reserved` — hash `state_id -> "<attempt>:<deadline_ms>"` of dispatched
  attempts not yet seen in the log;
* `mfm:{rid}:watchdog` — the token of the one liveness `advance` that may re-arm itself
  (compare-and-set: other watchdog messages carrying an old token just exit);
* `mfm:submit:<task_id>` — the run id a (possibly redelivered) `mfm.submit` task started.

Leases and reservations are hints for liveness only; the guarded event log is what
makes duplicate deliveries harmless.

A lease is not a perfect fence. The worker checks it (compare-and-pexpire, which also
renews it) before every transport call and fact binding, and the renewer marks it lost
once renewals have failed for half a TTL, so a superseded worker stops before repeating
an external effect in almost every case. It cannot close the window entirely: a process
can pause (GC, VM freeze, a GIL-holding call) right after a successful check and act
after its lease expired and another worker took over. Side effects must therefore also
carry their idempotency key to the receiver (CONTRACT §8); the event log guards then make
sure only one attempt's outcome is recorded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import redis

_COMPARE_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_COMPARE_PEXPIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_REARM_WATCHDOG = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def worker_id() -> str:
    """`host:pid` of the calling process (computed per call: prefork children differ)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseInfo(NamedTuple):
    attempt: int
    worker: str
    expires_ms: int


def run_key(run_id: str, part: str) -> str:
    return f"mfm:{{{run_id}}}:{part}"


def lease_key(run_id: str, state_id: str) -> str:
    return run_key(run_id, f"lease:{state_id}")


class Coordination:
    """The Redis operations the coordinator and the workers share."""

    def __init__(self, client: redis.Redis) -> None:
        self.client: Any = client
        self._delete = client.register_script(_COMPARE_DELETE)
        self._pexpire = client.register_script(_COMPARE_PEXPIRE)
        self._rearm = client.register_script(_REARM_WATCHDOG)

    # -- plan fingerprint -----------------------------------------------------------------------
    def record_plan(self, run_id: str, fingerprint: str) -> None:
        self.client.set(run_key(run_id, "plan"), fingerprint)

    def recorded_plan(self, run_id: str) -> str | None:
        value = self.client.get(run_key(run_id, "plan"))
        return None if value is None else value.decode()

    def record_plan_if_missing(self, run_id: str, fingerprint: str) -> str:
        """The recorded fingerprint; records `fingerprint` if none was (runs started elsewhere)."""
        key = run_key(run_id, "plan")
        self.client.set(key, fingerprint, nx=True)
        value = self.client.get(key)
        return fingerprint if value is None else str(value.decode())

    # -- leases ---------------------------------------------------------------------------------
    def acquire_lease(self, run_id: str, state_id: str, attempt: int, ttl_ms: int) -> str | None:
        """A token if this caller now holds the attempt's lease, else None (someone else does).

        The value names the holder (`host:pid`) so `mfm status` can say who runs what."""
        value = f"{attempt}:{uuid.uuid4().hex}:{worker_id()}"
        ok = self.client.set(lease_key(run_id, state_id), value, nx=True, px=ttl_ms)
        return value if ok else None

    def renew_lease(self, key: str, value: str, ttl_ms: int) -> bool:
        return bool(self._pexpire(keys=[key], args=[value, ttl_ms]))

    def release_lease(self, run_id: str, state_id: str, value: str) -> None:
        self._delete(keys=[lease_key(run_id, state_id)], args=[value])

    def live_leases(self, run_id: str, state_ids: Iterable[str]) -> dict[str, int]:
        """state_id → attempt number of every lease currently held."""
        ids = list(state_ids)
        if not ids:
            return {}
        values = self.client.mget([lease_key(run_id, s) for s in ids])
        held: dict[str, int] = {}
        for state_id, value in zip(ids, values, strict=True):
            if value is not None:
                held[state_id] = int(value.split(b":", 1)[0])
        return held

    def lease_info(self, run_id: str, state_ids: Iterable[str]) -> dict[str, LeaseInfo]:
        """state_id → (attempt, worker, expiry in ms since the epoch) of every live lease."""
        ids = list(state_ids)
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for state_id in ids:
            pipe.get(lease_key(run_id, state_id))
            pipe.pttl(lease_key(run_id, state_id))
        replies = pipe.execute()
        now_ms = int(time.time() * 1000)
        info: dict[str, LeaseInfo] = {}
        for k, state_id in enumerate(ids):
            value, ttl = replies[2 * k], replies[2 * k + 1]
            if value is None or ttl is None or ttl < 0:
                continue
            attempt, _, rest = value.decode().partition(":")
            worker = rest.partition(":")[2] or "unknown"
            info[state_id] = LeaseInfo(int(attempt), worker, now_ms + int(ttl))
        return info

    # -- coordinator lock -----------------------------------------------------------------------
    def try_lock(self, run_id: str, ttl_ms: int) -> str | None:
        token = uuid.uuid4().hex
        ok = self.client.set(run_key(run_id, "lock"), token, nx=True, px=ttl_ms)
        return token if ok else None

    def unlock(self, run_id: str, token: str) -> None:
        self._delete(keys=[run_key(run_id, "lock")], args=[token])

    def renew_lock(self, run_id: str, token: str, ttl_ms: int) -> bool:
        """Extend the coordinator lock if `token` still holds it (False: it was lost)."""
        return bool(self._pexpire(keys=[run_key(run_id, "lock")], args=[token, ttl_ms]))

    # -- reservations ---------------------------------------------------------------------------
    def reservations(self, run_id: str, now_ms: int) -> dict[str, int]:
        """Unexpired reservations (state → attempt); expired ones are dropped."""
        key = run_key(run_id, "reserved")
        raw = self.client.hgetall(key)
        live: dict[str, int] = {}
        expired: list[bytes] = []
        for field, value in raw.items():
            attempt, deadline = value.decode().split(":", 1)
            if int(deadline) > now_ms:
                live[field.decode()] = int(attempt)
            else:
                expired.append(field)
        if expired:
            self.client.hdel(key, *expired)
        return live

    def reserve(self, run_id: str, entries: dict[str, tuple[int, int]]) -> None:
        """Record `state → (attempt, deadline_ms)` before the dispatch is sent."""
        if entries:
            mapping = {s: f"{a}:{d}" for s, (a, d) in entries.items()}
            self.client.hset(run_key(run_id, "reserved"), mapping=mapping)

    def clear_reservations(self, run_id: str, state_ids: Iterable[str]) -> None:
        ids = list(state_ids)
        if ids:
            self.client.hdel(run_key(run_id, "reserved"), *ids)

    # -- watchdog -------------------------------------------------------------------------------
    def watchdog_token(self, run_id: str) -> str | None:
        value = self.client.get(run_key(run_id, "watchdog"))
        return None if value is None else str(value.decode())

    def claim_watchdog(self, run_id: str, ttl_ms: int, holder: str | None = None) -> str | None:
        """A fresh token if the caller may schedule the run's watchdog, else None.

        Allowed when no watchdog is pending, or when `holder` is the pending one's token
        (the watchdog message re-arming itself): one chain per run, never more."""
        token = uuid.uuid4().hex
        ok = self._rearm(keys=[run_key(run_id, "watchdog")], args=[holder or "", token, ttl_ms])
        return token if ok else None

    def take_over_watchdog(self, run_id: str, ttl_ms: int) -> str:
        """Overwrite the token (startup sweep): any older pending message then just exits."""
        token = uuid.uuid4().hex
        self.client.set(run_key(run_id, "watchdog"), token, px=ttl_ms)
        return token

    def release_watchdog(self, run_id: str, token: str) -> None:
        self._delete(keys=[run_key(run_id, "watchdog")], args=[token])

    # -- submission de-duplication ------------------------------------------------------------
    def claim_submission(self, task_id: str, run_id: str, ttl_s: int) -> str:
        """The run id of submission `task_id`: `run_id` if this call is the first, else the
        one recorded by an earlier delivery of the same task."""
        key = f"mfm:submit:{task_id}"
        if self.client.set(key, run_id, nx=True, ex=ttl_s):
            return run_id
        value = self.client.get(key)
        return run_id if value is None else str(value.decode())

    def forget_run(self, run_id: str) -> None:
        """Drop the coordination keys of a finished run (the event log stays)."""
        self.client.delete(
            run_key(run_id, "reserved"), run_key(run_id, "watchdog"), run_key(run_id, "plan")
        )


class LeaseKeeper:
    """One daemon thread per process that renews every lease this process holds (TTL/3).

    A lease is *lost* when a renewal finds another value in its key, or when renewals
    have failed (Redis unreachable) for half a TTL: by then the holder can no longer
    tell whether someone else took over, so `fence` refuses to let the attempt act.
    Lost marks are per lease value (unique per acquisition), so a stale renewal of an
    earlier hold never marks a later re-hold of the same state lost.
    """

    def __init__(self, coordination: Coordination, ttl_ms: int) -> None:
        self._coord = coordination
        self._ttl_ms = ttl_ms
        self._held: dict[str, str] = {}
        self._confirmed: dict[str, float] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def hold(self, run_id: str, state_id: str, value: str) -> None:
        key = lease_key(run_id, state_id)
        with self._lock:
            self._held[key] = value
            self._confirmed[value] = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="mfm-lease-keeper", daemon=True
                )
                self._thread.start()

    def drop(self, run_id: str, state_id: str, value: str) -> bool:
        """Stop renewing; True if the lease was never lost while held."""
        key = lease_key(run_id, state_id)
        with self._lock:
            if self._held.get(key) == value:
                del self._held[key]
            self._confirmed.pop(value, None)
            lost = value in self._lost
            self._lost.discard(value)
        return not lost

    def is_lost(self, value: str) -> bool:
        with self._lock:
            return value in self._lost

    def mark_lost(self, value: str) -> None:
        with self._lock:
            if value in self._confirmed:
                self._lost.add(value)

    def confirm(self, value: str) -> None:
        with self._lock:
            if value in self._confirmed:
                self._confirmed[value] = time.monotonic()

    def fence(self, run_id: str, state_id: str, value: str) -> None:
        """Raise `attempt_lease_lost` unless this process still holds the lease (renews it)."""
        from mfm_dist.errors import StorageError

        lost = StorageError(
            "attempt_lease_lost",
            f"the lease of {state_id} is no longer held by this worker; the attempt stops",
        )
        if self.is_lost(value):
            raise lost
        try:
            ok = self._coord.renew_lease(lease_key(run_id, state_id), value, self._ttl_ms)
        except redis.RedisError:
            # Cannot confirm: refuse to act (the attempt ends as an infrastructure fault).
            raise StorageError(
                "attempt_lease_unconfirmed",
                "could not confirm the attempt's lease (redis unreachable)",
                retryable=True,
            ) from None
        if not ok:
            self.mark_lost(value)
            raise lost
        self.confirm(value)

    def _loop(self) -> None:
        period = self._ttl_ms / 3000.0
        while True:
            self._wake.wait(period)
            with self._lock:
                held = list(self._held.items())
            for key, value in held:
                try:
                    ok = self._coord.renew_lease(key, value, self._ttl_ms)
                except redis.RedisError:
                    # Transient, but only for so long: after half a TTL without a
                    # confirmed renewal, someone else may own the attempt already.
                    with self._lock:
                        since = self._confirmed.get(value)
                        if since is not None and (
                            time.monotonic() - since > self._ttl_ms / 2000.0
                        ):
                            self._lost.add(value)
                    continue
                with self._lock:
                    if value not in self._confirmed:
                        continue  # dropped (or re-held with a new value) meanwhile
                    if ok:
                        self._confirmed[value] = time.monotonic()
                    elif self._held.get(key) == value:
                        self._lost.add(value)
