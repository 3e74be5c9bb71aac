"""Redis coordination primitives of a distributed run: attempt leases, the per-run
coordinator lock, dispatch reservations, wake-up timers and the recorded plan fingerprint.

All keys of a run share the hash tag `{<run_id>}` with the event store's keys:

* `mfm:{rid}:plan` — the plan fingerprint recorded at submission;
* `mfm:{rid}:lease:<state_id>` — `"<attempt>:<token>:<host>:<pid>"` while a worker runs that
  attempt (`SET NX PX`; renewed and released only by the holder: compare-and-pexpire/-delete).
  The value names the attempt *and* the holding process, so a redelivered task that finds
  the lease of a process that is dead on this host takes it over at once instead of waiting
  for the TTL;
* `mfm:{rid}:lock` — the coordinator lock, `"<token>:<host>:<pid>"` (compare-and-delete; a
  dead local holder's lock is taken over at once);
* `mfm:{rid}:dirty` — set by an `advance` that found the lock busy: the holder runs one more
  round before it lets go, so no wake-up is lost and nobody spins on the lock;
* `mfm:{rid}:looked` — the log head the last coordinator look had seen (a chord's join skips
  its look when nothing was appended since);
* `mfm:{rid}:reserved` — hash `state_id -> "<attempt>:<deadline_ms>:<kind>:<since_ms>"` of
  attempts the coordinator decided on that the log does not show yet. Kinds: `d` delayed (a
  retry waiting out its backoff until `deadline`; nothing sent yet), `s` sent (on the broker
  since `since`; given up at `deadline`), `c` claimed (a worker took the lease at `since`;
  given up at `deadline` = one lease TTL later unless `StateEntered` lands);
* `mfm:{rid}:notified` — `sending:<holder>` while a coordinator sends the run's
  `on_complete` callback (expires), then `sent` (kept a week);
* `mfm:timers` — one sorted set for all runs: run id → when its coordinator must look next
  (ms). Every control worker polls it (`pop_due`), so the timers that keep runs alive live in
  Redis and survive a broker restart or a dead control worker; nothing waits in a message's
  countdown;

Leases and reservations are hints for liveness only; the guarded event log is what
makes duplicate deliveries harmless.

A lease is not a perfect fence. The worker checks it (compare-and-pexpire, which also
renews it) before every transport call and fact binding, and the renewer marks it lost
once renewals have failed for half a TTL, so a superseded worker stops before repeating
an external effect in almost every case. It cannot close the window entirely: a process
can pause (GC, VM freeze, a GIL-holding call) right after a successful check and act
after its lease expired and another worker took over. Side effects must therefore also
carry their idempotency key to the receiver (docs: IO and facts); the event log guards then
make sure only one attempt's outcome is recorded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import redis

from mfm_dist import metrics
from mfm_dist.errors import MfmError, StorageError
from mfm_dist.stores.redis_keys import (
    DELTAS,
    DELTAS_UPTO,
    DIRTY,
    HOLDERS,
    LOCK,
    LOOKED,
    NOTIFIED,
    PLAN,
    RESERVED,
    TIMERS_KEY,
    lease_key,
    run_key,
)

NOTIFIED_TTL_S = 7 * 24 * 3600
"""How long `mfm:{rid}:notified` remembers that a run's callback was sent."""

_COMPARE_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_COMPARE_PEXPIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock, dirty, looked. ARGV: token, head, continue_if_dirty. Record the log head the
# holder has seen; then, if a wake-up arrived since its last look (dirty) and the caller may
# go on, keep the lock and return 2 (look again); else release it and return 1 if a wake-up
# arrived after all (the caller sends one `advance`), 0 if none did.
_UNLOCK = """
local mine = redis.call('GET', KEYS[1]) == ARGV[1]
if mine and ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', 86400) end
local dirty = redis.call('DEL', KEYS[2])
if mine and dirty == 1 and ARGV[3] == '1' then return 2 end
if mine then redis.call('DEL', KEYS[1]) end
return dirty
"""
# KEYS: key. ARGV: new value, ttl_ms, expected current value ('' = must be absent).
_SET_IF = """
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[3] == '') or cur == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: lease, reserved. ARGV: value, ttl_ms, expected current ('' = absent), state_id,
# attempt, now_ms. Takes the lease and marks the attempt's reservation as claimed, so the
# coordinator gives it up one lease TTL after the claim, not after the dispatch timeout.
_ACQUIRE_LEASE = """
local cur = redis.call('GET', KEYS[1])
if not ((cur == false and ARGV[3] == '') or cur == ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[4] .. '|' .. ARGV[5], ARGV[8])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
local r = redis.call('HGET', KEYS[2], ARGV[4])
if r then
  local a = string.match(r, '^(%d+):')
  if a == ARGV[5] then
    local deadline = tonumber(ARGV[6]) + tonumber(ARGV[2])
    redis.call('HSET', KEYS[2], ARGV[4], a .. ':' .. deadline .. ':c:' .. ARGV[6])
  end
end
return 1
"""
# KEYS: reserved. ARGV: state_id, "<attempt>:". Drop the state's reservation if it is for
# that attempt; return how many remain.
_RELEASE_RESERVATION = """
local r = redis.call('HGET', KEYS[1], ARGV[1])
if r and string.sub(r, 1, string.len(ARGV[2])) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return redis.call('HLEN', KEYS[1])
"""
# KEYS: reserved. ARGV: pairs of (state_id, expected value, new value). Replace each field
# only if it still holds the expected value (a worker may have claimed it meanwhile).
_REPLACE_RESERVATIONS = """
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
return 1
"""
# KEYS: timers. ARGV: now_ms, rearm_ms, limit. Due run ids, each pushed `rearm_ms` ahead so
# a lost wake-up message is sent again one period later.
_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local later = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, rid in ipairs(due) do redis.call('ZADD', KEYS[1], later, rid) end
return due
"""


def holder_id() -> str:
    """`host:pid` of the calling process (computed per call: prefork children differ)."""
    return f"{socket.gethostname()}:{os.getpid()}"


worker_id = holder_id

HOLDERS_TTL_S = 7 * 24 * 3600
"""How long a run's attempt holders are kept after the last attempt started."""


def holders_key(run_id: str) -> str:
    """The run's hash of `<state>|<attempt>` → `host:pid` of the process that took the lease."""
    return run_key(run_id, HOLDERS)


def holder_is_dead(holder: str) -> bool:
    """True only when `holder` (`host:pid`) is a process of this host that no longer exists.

    Another host's process cannot be checked from here: it counts as alive (its lease or
    lock then ends by TTL)."""
    host, _, pid_text = holder.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed child that its parent has not reaped yet still answers `kill(pid, 0)`."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class LeaseInfo(NamedTuple):
    attempt: int
    worker: str
    expires_ms: int


class Reservation(NamedTuple):
    """An attempt the coordinator decided on that the log does not show yet."""

    attempt: int
    deadline_ms: int
    kind: str
    """`d` delayed (not sent before `deadline_ms`), `s` sent, `c` claimed by a worker."""
    since_ms: int

    def encode(self) -> str:
        return f"{self.attempt}:{self.deadline_ms}:{self.kind}:{self.since_ms}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Reservation:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split(":")
        attempt, deadline = int(parts[0]), int(parts[1])
        kind = parts[2] if len(parts) > 2 else "s"
        since = int(parts[3]) if len(parts) > 3 else 0
        return cls(attempt, deadline, kind, since)


DELAYED, SENT, CLAIMED = "d", "s", "c"


def lease_holder(value: str) -> str:
    """The `host:pid` part of a lease value `attempt:token:host:pid`."""
    return value.split(":", 2)[2] if value.count(":") >= 2 else ""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Coordination:
    """The Redis operations the coordinator and the workers share."""

    def __init__(self, client: redis.Redis) -> None:
        self.client: Any = client
        self._delete = client.register_script(_COMPARE_DELETE)
        self._pexpire = client.register_script(_COMPARE_PEXPIRE)
        self._unlock = client.register_script(_UNLOCK)
        self._set_if = client.register_script(_SET_IF)
        self._acquire = client.register_script(_ACQUIRE_LEASE)
        self._pop_due = client.register_script(_POP_DUE)
        self._release_reservation = client.register_script(_RELEASE_RESERVATION)
        self._replace_reservations = client.register_script(_REPLACE_RESERVATIONS)

    # -- plan fingerprint -----------------------------------------------------------------------
    def record_plan(self, run_id: str, fingerprint: str) -> None:
        self.client.set(run_key(run_id, PLAN), fingerprint)

    def recorded_plan(self, run_id: str) -> str | None:
        value = self.client.get(run_key(run_id, PLAN))
        return None if value is None else value.decode()

    def record_plan_if_missing(self, run_id: str, fingerprint: str) -> str:
        """The recorded fingerprint; records `fingerprint` if none was (runs started elsewhere)."""
        key = run_key(run_id, PLAN)
        self.client.set(key, fingerprint, nx=True)
        value = self.client.get(key)
        return fingerprint if value is None else str(value.decode())

    # -- leases ---------------------------------------------------------------------------------
    def acquire_lease(self, run_id: str, state_id: str, attempt: int, ttl_ms: int) -> str | None:
        """A lease value if this caller now holds the attempt's lease, else None.

        Takes over a lease whose holder is a dead process of this host (a pool child killed
        before it could let go: its redelivered task must not wait out the TTL). Marks the
        attempt's reservation claimed and records which process took it (`holders_key`, for
        the dashboard's timeline), in the same script: no round trip of its own."""
        holder = holder_id()
        value = f"{attempt}:{uuid.uuid4().hex}:{holder}"
        keys = [lease_key(run_id, state_id), run_key(run_id, RESERVED), holders_key(run_id)]
        args: list[Any] = [value, ttl_ms, "", state_id, attempt, _now_ms(), HOLDERS_TTL_S, holder]
        if self._acquire(keys=keys, args=args):
            return value
        current = self.client.get(keys[0])
        if current is None or not holder_is_dead(lease_holder(current.decode())):
            return None
        args[2] = current.decode()
        return value if self._acquire(keys=keys, args=args) else None

    def renew_lease(self, key: str, value: str, ttl_ms: int) -> bool:
        return bool(self._pexpire(keys=[key], args=[value, ttl_ms]))

    def release_lease(self, run_id: str, state_id: str, value: str) -> None:
        self._delete(keys=[lease_key(run_id, state_id)], args=[value])

    def live_leases(self, run_id: str, state_ids: Iterable[str]) -> dict[str, int]:
        """state_id → attempt number of every lease currently held by a live process."""
        ids = list(state_ids)
        if not ids:
            return {}
        values = self.client.mget([lease_key(run_id, s) for s in ids])
        held: dict[str, int] = {}
        for state_id, value in zip(ids, values, strict=True):
            if value is not None and not holder_is_dead(lease_holder(value.decode())):
                held[state_id] = int(value.split(b":", 1)[0])
        return held

    def lease_info(self, run_id: str, state_ids: Iterable[str]) -> dict[str, LeaseInfo]:
        """state_id → (attempt, holder, expiry in ms since the epoch) of every live lease."""
        ids = list(state_ids)
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for state_id in ids:
            pipe.get(lease_key(run_id, state_id))
            pipe.pttl(lease_key(run_id, state_id))
        replies = pipe.execute()
        now_ms = _now_ms()
        info: dict[str, LeaseInfo] = {}
        for k, state_id in enumerate(ids):
            value, ttl = replies[2 * k], replies[2 * k + 1]
            if value is None or ttl is None or ttl < 0:
                continue
            text = value.decode()
            holder = lease_holder(text) or "unknown"
            if holder_is_dead(holder):
                continue
            info[state_id] = LeaseInfo(int(text.split(":", 1)[0]), holder, now_ms + int(ttl))
        return info

    # -- coordinator lock -----------------------------------------------------------------------
    def try_lock(self, run_id: str, ttl_ms: int) -> str | None:
        """A token if the caller now holds the run's coordinator lock (taking over the lock
        of a dead process of this host), else None."""
        key = run_key(run_id, LOCK)
        token = f"{uuid.uuid4().hex}:{holder_id()}"
        if self._set_if(keys=[key], args=[token, ttl_ms, ""]):
            return token
        current = self.client.get(key)
        if current is None:
            return token if self._set_if(keys=[key], args=[token, ttl_ms, ""]) else None
        text = current.decode()
        if not holder_is_dead(text.partition(":")[2]):
            return None
        return token if self._set_if(keys=[key], args=[token, ttl_ms, text]) else None

    def unlock(
        self, run_id: str, token: str, *, head: int | None = None, go_on: bool = False
    ) -> int:
        """Release the lock (recording the log `head` its holder has seen). Returns 2 when a
        wake-up arrived meanwhile and `go_on`: the lock is kept, look again; 1 when one
        arrived but the lock was released: send one `advance`; 0 otherwise."""
        keys = [run_key(run_id, LOCK), run_key(run_id, DIRTY), run_key(run_id, LOOKED)]
        args = [token, "" if head is None else head, "1" if go_on else "0"]
        return int(self._unlock(keys=keys, args=args))

    def looked_head(self, run_id: str) -> int | None:
        """The log head the last coordinator look of the run had seen."""
        value = self.client.get(run_key(run_id, LOOKED))
        return None if value is None else int(value)

    def renew_lock(self, run_id: str, token: str, ttl_ms: int) -> bool:
        """Extend the coordinator lock if `token` still holds it (False: it was lost)."""
        return bool(self._pexpire(keys=[run_key(run_id, LOCK)], args=[token, ttl_ms]))

    def mark_dirty(self, run_id: str, ttl_ms: int) -> None:
        """An `advance` found the lock busy: ask the holder for one more round."""
        self.client.set(run_key(run_id, DIRTY), b"1", px=ttl_ms)

    # -- reservations ---------------------------------------------------------------------------
    def reservations(self, run_id: str) -> dict[str, Reservation]:
        """Every reservation of the run (expired ones included: the caller decides)."""
        raw = self.client.hgetall(run_key(run_id, RESERVED))
        return {field.decode(): Reservation.decode(value) for field, value in raw.items()}

    def grouped_reservations(self, run_id: str) -> list[tuple[Reservation, list[str]]]:
        """Every reservation of the run as (reservation, the states holding it): the same
        content as `reservations`, without decoding a wide wave's entries one by one — a
        slice of a wave is reserved with one value, so 100,000 reservations share a few
        hundred values, each decoded once."""
        raw = self.client.hgetall(run_key(run_id, RESERVED))
        groups: dict[bytes, list[bytes]] = {}
        for state_id, value in raw.items():
            group = groups.get(value)
            if group is None:
                groups[value] = [state_id]
            else:
                group.append(state_id)
        return [
            (Reservation.decode(value), [s.decode() for s in states])
            for value, states in groups.items()
        ]

    def reserve(self, run_id: str, entries: dict[str, Reservation]) -> None:
        """Record reservations (before the dispatch is sent)."""
        if entries:
            mapping = {s: r.encode() for s, r in entries.items()}
            self.client.hset(run_key(run_id, RESERVED), mapping=mapping)

    def replace_reservations(
        self, run_id: str, changes: dict[str, tuple[Reservation, Reservation]]
    ) -> None:
        """`state → (expected, new)`: write `new` where the field still holds `expected` —
        never over a claim a worker made in between."""
        if not changes:
            return
        args: list[str] = []
        for state_id, (old, new) in changes.items():
            args += [state_id, old.encode(), new.encode()]
        self._replace_reservations(keys=[run_key(run_id, RESERVED)], args=args)

    def release_reservation(self, run_id: str, state_id: str, attempt: int) -> int:
        """The attempt is in the log now: drop its reservation (only if it still names that
        attempt). Returns how many reservations remain — attempts dispatched that no
        coordinator look has seen close yet."""
        return int(
            self._release_reservation(
                keys=[run_key(run_id, RESERVED)], args=[state_id, f"{attempt}:"]
            )
        )

    def revoke_leases(self, run_id: str, state_ids: Iterable[str]) -> None:
        """Take the leases of these states away (their attempts were closed for them): each
        holder's next renewal fails, and its `LeaseKeeper` stops the attempt."""
        keys = [lease_key(run_id, s) for s in state_ids]
        if keys:
            self.client.delete(*keys)

    def clear_reservations(self, run_id: str, state_ids: Iterable[str]) -> None:
        ids = list(state_ids)
        if ids:
            self.client.hdel(run_key(run_id, RESERVED), *ids)

    # -- wake-up timers -------------------------------------------------------------------------
    def schedule(self, run_id: str, due_ms: int) -> None:
        """The run's coordinator looks again at `due_ms` (replaces the previous time)."""
        self.client.zadd(TIMERS_KEY, {run_id: due_ms})

    def schedule_by(self, run_id: str, due_ms: int) -> None:
        """The run's coordinator looks again no later than `due_ms` (only moves it earlier)."""
        self.client.zadd(TIMERS_KEY, {run_id: due_ms}, lt=True)

    def scheduled(self, run_id: str) -> int | None:
        score = self.client.zscore(TIMERS_KEY, run_id)
        return None if score is None else int(score)

    def unschedule(self, run_id: str) -> None:
        self.client.zrem(TIMERS_KEY, run_id)

    def pop_due(
        self, now_ms: int, rearm_ms: int, limit: int = 500, *, timers: str = TIMERS_KEY
    ) -> list[str]:
        """Run ids whose timer is due; each is re-armed `rearm_ms` later in the same step,
        so two pollers never both take it and a lost wake-up is repeated. `timers`: another
        timer set of the same shape (the backfills')."""
        due = self._pop_due(keys=[timers], args=[now_ms, rearm_ms, limit])
        return [d.decode() if isinstance(d, bytes) else str(d) for d in due]

    # -- completion callbacks -------------------------------------------------------------------
    def claim_notification(self, run_id: str, ttl_ms: int) -> bool | None:
        """True: the caller sends the run's callback now. False: someone else is sending it.
        None: it was sent. (A claim expires after `ttl_ms`, so a sender that died is
        replaced; the repeat carries the same task id.)"""
        key = run_key(run_id, NOTIFIED)
        if self.client.set(key, f"sending:{holder_id()}", nx=True, px=ttl_ms):
            return True
        value = self.client.get(key)
        if value is None:
            return bool(self.client.set(key, f"sending:{holder_id()}", nx=True, px=ttl_ms))
        return None if value == b"sent" else False

    def mark_notified(self, run_id: str) -> None:
        self.client.set(run_key(run_id, NOTIFIED), b"sent", ex=NOTIFIED_TTL_S)

    def forget_run(self, run_id: str) -> None:
        """Drop the coordination state of a finished run (the event log stays)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(
            run_key(run_id, RESERVED),
            run_key(run_id, PLAN),
            run_key(run_id, DIRTY),
            run_key(run_id, LOOKED),
            run_key(run_id, DELTAS),
            run_key(run_id, DELTAS_UPTO),
        )
        pipe.zrem(TIMERS_KEY, run_id)
        pipe.execute()


def lease_lost_error(state_id: str) -> MfmError:
    return StorageError(
        "attempt_lease_lost",
        f"the lease of {state_id} is no longer held by this worker; the attempt stops",
    )


class LeaseKeeper:
    """One daemon thread per process that renews every lease this process holds (TTL/3).

    A lease is *lost* when a renewal finds another value in its key, or when renewals
    have failed (Redis unreachable) for half a TTL: by then the holder can no longer
    tell whether someone else took over, so `fence` refuses to let the attempt act.
    Lost marks are per lease value (unique per acquisition), so a stale renewal of an
    earlier hold never marks a later re-hold of the same state lost. A lease taken away
    on purpose (the coordinator cancelled the run: `revoke_leases`) is lost the same way;
    the holder's `on_lost` callback then stops the attempt at once.
    """

    def __init__(self, coordination: Coordination, ttl_ms: int) -> None:
        self._coord = coordination
        self._ttl_ms = ttl_ms
        self._held: dict[str, str] = {}
        self._confirmed: dict[str, float] = {}
        self._lost: set[str] = set()
        self._on_lost: dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def hold(
        self,
        run_id: str,
        state_id: str,
        value: str,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """Renew this lease until `drop`; `on_lost` runs (once, on the keeper's or the
        fencing thread) when the lease turns out lost."""
        key = lease_key(run_id, state_id)
        with self._lock:
            self._held[key] = value
            self._confirmed[value] = time.monotonic()
            if on_lost is not None:
                self._on_lost[value] = on_lost
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
            self._on_lost.pop(value, None)
            lost = value in self._lost
            self._lost.discard(value)
        return not lost

    def is_lost(self, value: str) -> bool:
        with self._lock:
            return value in self._lost

    def mark_lost(self, value: str) -> None:
        with self._lock:
            callback = self._lost_locked(value) if value in self._confirmed else None
        if callback is not None:
            callback()

    def _lost_locked(self, value: str) -> Callable[[], None] | None:
        """Mark `value` lost (caller holds the lock); its callback, to call after unlocking."""
        if value not in self._lost:
            metrics.lease_lost()  # [metrics hook]
        self._lost.add(value)
        return self._on_lost.pop(value, None)

    def confirm(self, value: str) -> None:
        with self._lock:
            if value in self._confirmed:
                self._confirmed[value] = time.monotonic()

    def fence(self, run_id: str, state_id: str, value: str) -> None:
        """Raise `attempt_lease_lost` unless this process still holds the lease (renews it)."""
        lost = lease_lost_error(state_id)
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
                callback: Callable[[], None] | None = None
                try:
                    ok = self._coord.renew_lease(key, value, self._ttl_ms)
                except redis.RedisError:
                    # Transient, but only for so long: after half a TTL without a
                    # confirmed renewal, someone else may own the attempt already.
                    with self._lock:
                        since = self._confirmed.get(value)
                        if since is not None and (time.monotonic() - since > self._ttl_ms / 2000.0):
                            callback = self._lost_locked(value)
                else:
                    with self._lock:
                        if value not in self._confirmed:
                            continue  # dropped (or re-held with a new value) meanwhile
                        if ok:
                            self._confirmed[value] = time.monotonic()
                        elif self._held.get(key) == value:
                            callback = self._lost_locked(value)
                if callback is not None:
                    callback()
