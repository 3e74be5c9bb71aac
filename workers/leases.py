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
* `mfm:{rid}:watchdog` — set while a liveness `advance` is scheduled.

Leases and reservations are hints for liveness only; the guarded event log is what
makes duplicate deliveries harmless.
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
    def claim_watchdog(self, run_id: str, ttl_ms: int) -> bool:
        return bool(self.client.set(run_key(run_id, "watchdog"), "1", nx=True, px=ttl_ms))

    def release_watchdog(self, run_id: str) -> None:
        self.client.delete(run_key(run_id, "watchdog"))

    def forget_run(self, run_id: str) -> None:
        """Drop the coordination keys of a finished run (the event log stays)."""
        self.client.delete(run_key(run_id, "reserved"), run_key(run_id, "watchdog"))


class LeaseKeeper:
    """One daemon thread per process that renews every lease this process holds (TTL/3)."""

    def __init__(self, coordination: Coordination, ttl_ms: int) -> None:
        self._coord = coordination
        self._ttl_ms = ttl_ms
        self._held: dict[str, str] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def hold(self, run_id: str, state_id: str, value: str) -> None:
        key = lease_key(run_id, state_id)
        with self._lock:
            self._held[key] = value
            self._lost.discard(key)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="mfm-lease-keeper", daemon=True
                )
                self._thread.start()

    def drop(self, run_id: str, state_id: str) -> bool:
        """Stop renewing; True if the lease was never lost while held."""
        key = lease_key(run_id, state_id)
        with self._lock:
            self._held.pop(key, None)
            lost = key in self._lost
            self._lost.discard(key)
        return not lost

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
                    continue  # transient: the next round retries before the TTL runs out
                if not ok:
                    with self._lock:
                        if key in self._held:
                            self._lost.add(key)
