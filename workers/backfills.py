"""Backfills on the cluster: driven by the control workers, with no client attached.

A cluster backfill (docs/backfills.md) is its plan (an artifact) and its journal (in the
Redis event store). What keeps it moving is one entry in the sorted set
`mfm:backfill_timers` (backfill name → when to look next, ms), polled by every control
worker's timer poller exactly like the run timers (`workers.timers`): a due entry is
re-armed one period later and sent as one `mfm.backfill_tick(name)` on the control queue.
A tick takes the backfill's lock (`mfm:{backfill:<name>}:lock`, a dead local holder's
is taken over at once), runs driver steps — settle what finished, claim and submit up to
`max_active` runs through the ordinary submission path (`workers.submit.accept`), cancel
active runs of a cancelled backfill — and sets the timer for its next look. The timer
lives in Redis (AOF), so the backfill survives the CLI going away, every worker
restarting and lost messages; a control worker that starts (or sees Redis restart) arms
a timer for every unfinished backfill that lacks one.

A tick sets the timer from what it saw, which may be stale by then: `create`, `resume`,
`cancel` and `retry` record their change and then make the timer due (`arm`) — possibly
while a tick that read the journal before their record is still running. So a tick sets
its timer only if nobody touched it since the tick began (`settle_timer`, one atomic
step); otherwise it keeps the earlier of the two times and never removes it (a backfill
re-issued while the tick ended the previous issue keeps its wake-up). A tick that lost
its lock leaves the timer to the new holder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mfm_dist.backfill.driver import BackfillDriver
from mfm_dist.backfill.model import CODEC as RECORDS
from mfm_dist.backfill.model import (
    JOURNAL_NAMESPACE,
    BackfillPlan,
    Finished,
    backfill_journal,
    partition_request,
)
from mfm_dist.engine.lru import Lru
from mfm_dist.errors import MfmError
from mfm_dist.stores.redis_keys import BACKFILL_TIMERS_KEY
from workers.cancel import cancel_run
from workers.inline import coordinate_now
from workers.leases import Coordination
from workers.runtime import Runtime
from workers.submit import accept

log = logging.getLogger("mfm.backfill")

IDLE_S = 30.0
"""The watchdog period of a backfill with nothing in flight (paused): a safety net only;
`resume`, `cancel` and `retry` make the timer due at once."""
TICK_BUDGET_S = 2.0
"""One tick works at most this long (the control worker also coordinates runs)."""
DRIVER_CACHE = 64


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def lock_name(name: str) -> str:
    return f"backfill:{name}"


def arm(client: Any, name: str, due_ms: int | None = None, *, earlier_only: bool = False) -> None:
    """Make the backfill's timer due at `due_ms` (now by default)."""
    due = _now_ms() if due_ms is None else due_ms
    if earlier_only:
        client.zadd(BACKFILL_TIMERS_KEY, {name: due}, lt=True)
    else:
        client.zadd(BACKFILL_TIMERS_KEY, {name: due})


def disarm(client: Any, name: str) -> None:
    client.zrem(BACKFILL_TIMERS_KEY, name)


def scheduled(client: Any, name: str) -> int | None:
    score = client.zscore(BACKFILL_TIMERS_KEY, name)
    return None if score is None else int(score)


_SETTLE_TIMER = """
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
local untouched
if ARGV[2] == '' then
  untouched = not cur
else
  untouched = cur and tonumber(cur) == tonumber(ARGV[2])
end
if untouched then
  if ARGV[3] == '' then
    redis.call('ZREM', KEYS[1], ARGV[1])
  else
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  end
  return 1
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1])
end
return 0
"""


def settle_timer(client: Any, name: str, seen_ms: int | None, next_ms: int | None) -> bool:
    """What a tick leaves behind: the timer at `next_ms` (None: removed, the backfill
    finished) — if it is still `seen_ms`, what the tick found when it began. Else someone
    armed it meanwhile (`arm` after recording a change the tick may not have seen): the
    earlier of the two times is kept and the timer is never removed. Atomic; True when
    the tick's own time was applied."""
    script = client.register_script(_SETTLE_TIMER)
    args = ["" if seen_ms is None else seen_ms, "" if next_ms is None else next_ms]
    return bool(script(keys=[BACKFILL_TIMERS_KEY], args=[name, *args]))


def pop_due(client: Any, now_ms: int, rearm_ms: int, limit: int = 100) -> list[str]:
    """Names of due backfills, each re-armed `rearm_ms` later in the same atomic step."""
    return Coordination(client).pop_due(now_ms, rearm_ms, limit, timers=BACKFILL_TIMERS_KEY)


def unfinished(rt: Runtime) -> list[str]:
    """Names of the backfills whose current issue has not finished."""
    names = []
    for summary in rt.events.list_journals(JOURNAL_NAMESPACE):
        last = rt.events.journal_read(summary.journal, summary.head_seq, summary.head_seq)
        if last and not isinstance(RECORDS.decode(last[-1]), Finished):
            names.append(summary.name)
    return names


def arm_unfinished(rt: Runtime) -> int:
    """Give every unfinished backfill without a timer one, due now; returns how many."""
    names = unfinished(rt)
    if not names:
        return 0
    reply: Any = rt.redis.zadd(BACKFILL_TIMERS_KEY, dict.fromkeys(names, _now_ms()), nx=True)
    added = int(reply or 0)
    if added:
        log.info("armed the timers of %d unfinished backfill(s) that had none", added)
    return added


class ClusterStarter:
    """Starts partition runs through the cluster's submission path (`accept`): each is
    recorded, its run timer armed and its coordinator woken, as for `mfm.submit`."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._build = rt.registry.build_info()  # once: it spawns `git` (see mfm_dist.manifest)

    def start(self, plan: BackfillPlan, index: int, generation: int) -> str:
        inline: Callable[[str], object] | None = None
        if self.rt.settings.inline_coordination:
            inline = coordinate_now  # this control worker takes the run's first step
        request = partition_request(plan, index, generation)
        return accept(self.rt, request, coordinate=inline, build=self._build).run_id

    def ensure(self, plan: BackfillPlan, index: int, generation: int, run_id: str) -> None:
        """Running runs are the coordinators' (their own timers keep them alive)."""


class ClusterCanceller:
    def __init__(self, rt: Runtime, name: str) -> None:
        self.rt = rt
        self.requested_by = f"backfill {name}"

    def cancel(self, run_id: str, reason: str | None) -> None:
        cancel_run(self.rt, run_id, reason or "backfill cancelled", self.requested_by)


_drivers: Lru[BackfillDriver] = Lru(DRIVER_CACHE)
_drivers_rt: Runtime | None = None


def _driver(rt: Runtime, name: str) -> BackfillDriver:
    """One driver per backfill per process (its journal fold is read incrementally)."""
    global _drivers_rt
    if _drivers_rt is not rt:
        _drivers.clear()
        _drivers_rt = rt
    driver = _drivers.get(name)
    if driver is None:
        driver = BackfillDriver(
            rt.events,
            rt.artifacts,
            name,
            ClusterStarter(rt),
            ClusterCanceller(rt, name),
            # How soon a tick looks again while the backfill has runs in flight.
            poll_s=rt.settings.backfill_poll_s,
        )
        _drivers.put(name, driver)
    return driver


def tick(rt: Runtime, name: str, *, budget_s: float = TICK_BUDGET_S) -> str:
    """Drive the backfill `name` for at most `budget_s`, then set its timer (unless it was
    armed meanwhile: `settle_timer`). Returns a short status: busy, finished, running,
    paused, cancelling, missing, lock_lost."""
    backfill_journal(name)  # a valid name, or `backfill_name_invalid`
    coord = Coordination(rt.redis)
    ttl_ms = int(rt.settings.lock_ttl_s * 1000)
    token = coord.try_lock(lock_name(name), ttl_ms)
    if token is None:
        return "busy"  # the holder sets the timer when it is done
    seen_ms = scheduled(rt.redis, name)  # after the lock: a later change is the holder's
    next_ms: int | None = _now_ms() + int(IDLE_S * 1000)
    owns_timer = True
    status = "error"
    try:
        driver = _driver(rt, name)
        deadline = time.monotonic() + budget_s
        while True:
            try:
                outcome = driver.step()
            except MfmError as exc:
                if exc.info.code == "backfill_not_found":
                    next_ms, status = None, "missing"
                    return status
                raise
            status = outcome.status
            if outcome.status == "finished":
                next_ms = None
                return status
            if outcome.wake_s is None:
                next_ms = _now_ms() + int(IDLE_S * 1000)
                return status
            if outcome.wake_s > 0 or time.monotonic() >= deadline:
                next_ms = _now_ms() + int(outcome.wake_s * 1000)
                return status
            if not coord.renew_lock(lock_name(name), token, ttl_ms):
                owns_timer = False  # another tick holds the backfill now: its timer
                return "lock_lost"
    except Exception:
        next_ms = _now_ms() + 1000  # a store blip: look again soon
        raise
    finally:
        if owns_timer:
            settle_timer(rt.redis, name, seen_ms, next_ms)
        coord.unlock(lock_name(name), token)


def poller_hooks(
    rt_factory: Callable[[], Runtime], send: Callable[[str], None], *, rearm_ms: int
) -> tuple[Callable[[], int], Callable[[], object]]:
    """(poll, on_restart) for `workers.timers.TimerPoller`: send one tick per due
    backfill; arm every unfinished backfill that has no timer."""

    def poll() -> int:
        rt = rt_factory()
        due = pop_due(rt.redis, _now_ms(), rearm_ms)
        for name in due:
            send(name)
        return len(due)

    def on_restart() -> object:
        return arm_unfinished(rt_factory())

    return poll, on_restart
