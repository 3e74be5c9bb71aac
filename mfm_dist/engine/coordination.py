"""What a distributed coordinator should do next for a run — a pure decision.

The event log, not a queue's counters, decides what is complete. Given a run's
checked history, its progress, which attempts still hold a live lease and which
dispatches are still outstanding, `decide` returns the orphans to close, the
attempts to dispatch (with base snapshot and backoff countdown), and whether the
run is finished. It is backend-neutral: the Celery layer supplies leases and
reservations from Redis and carries the decision out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.progress import RunProgress
from mfm_dist.errors import ErrorInfo
from mfm_dist.events import RunStatus


@dataclass(frozen=True)
class Dispatch:
    state_id: str
    attempt: int
    base_snapshot_id: str
    countdown_s: float = 0.0


@dataclass(frozen=True)
class Finish:
    status: RunStatus
    final_snapshot_id: str
    error: ErrorInfo | None = None
    conflict_payload: dict[str, object] | None = None


@dataclass
class Decision:
    close_orphans: list[tuple[str, int]] = field(default_factory=list)
    dispatch: list[Dispatch] = field(default_factory=list)
    finish: Finish | None = None
    in_flight: int = 0
    waiting_on_leases: bool = False
    """Open attempts whose workers still hold leases: re-check after the lease TTL."""
    more: bool = False
    """More attempts could start now beyond `limit`: the caller continues in another step."""

    @property
    def idle(self) -> bool:
        return not (self.close_orphans or self.dispatch or self.finish)


LeaseAlive = Callable[[str, int], bool]


def decide(
    history: RunHistory,
    progress: RunProgress,
    *,
    lease_alive: LeaseAlive,
    reserved: Mapping[str, int],
    now_ms: int,
    limit: int | None = None,
) -> Decision:
    """Next actions for a run.

    `reserved` maps state → attempt number of dispatches not yet seen in the log
    and not yet expired (the caller drops expired ones). Orphans in the decision
    must be closed (`StateFailed{orphan_attempt_recovered}`) before acting on the
    rest; the caller then records them in `progress` and calls `decide` again.

    `limit` caps the dispatches of one decision (their bases are computed here); whether
    more could start now is `more` — the same states, in the same order, come first in the
    next decision, so slicing a wide wave changes nothing but how many steps send it.
    """
    decision = Decision()
    if history.completed is not None:
        return decision
    plan = progress.plan
    open_alive: set[int] = set()
    for state_id, att in history.open_attempts():
        if lease_alive(state_id, att.attempt):
            open_alive.add(plan.position[state_id])
        else:
            decision.close_orphans.append((state_id, att.attempt))
    if decision.close_orphans:
        return decision
    pending: set[int] = set()
    position, next_attempt = plan.position, progress.next_attempt
    for s, attempt in reserved.items():  # (a wide wave has 100,000 of them: keep it tight)
        i = position.get(s)
        if i is not None and attempt >= next_attempt[i]:
            pending.add(i)
    busy = open_alive | pending
    decision.in_flight = len(busy)
    decision.waiting_on_leases = bool(open_alive)

    slots = max(progress.run_config.max_concurrency - len(busy), 0)
    take = slots if limit is None else min(slots, limit)
    if progress.fan_out:
        candidates = _fan_out_candidates(progress, busy, take, now_ms)
    else:  # sequential runs advance strictly in canonical order and stop at a failure
        first = progress.first_pending()
        blocked = progress.failure() != (None, None)
        candidates = (
            [first]
            if first is not None and not blocked and first not in busy and progress.runnable(first)
            else []
        )
    if not candidates:
        if not busy:
            decision.finish = _finish(progress)
        return decision
    decision.more = slots > take and len(candidates) > take
    for i in candidates[:take]:
        countdown = max(0.0, (progress.retry_at_ms.get(i, 0) - now_ms) / 1000.0)
        base_id, _ = progress.base_for(i)
        decision.dispatch.append(
            Dispatch(str(plan.order[i]), progress.next_attempt[i], base_id, countdown)
        )
    return decision


def _fan_out_candidates(
    progress: RunProgress, busy: set[int], take: int, now_ms: int
) -> list[int]:
    """The states to start, in order: the first `take` of them, and at least one more if
    there is one (so the caller knows to continue).

    Only the frontier (not completed, every predecessor completed) can be runnable. Ready
    states take the free slots first, in canonical order; a retry still waiting out its
    backoff only gets a slot nothing else can use now (it holds the slot while its
    countdown runs, so the bound is never exceeded when it starts). `runnable` is asked
    lazily, in that order, only until the slots are filled: a 100,000-wide wave is sent a
    slice per step, and asking all of its unsent states at every step cost seconds."""
    ready: list[int] = []
    waiting: list[int] = []
    for i in sorted(progress.frontier - busy):
        if not progress.runnable(i):
            continue
        if progress.retry_at_ms.get(i, 0) > now_ms:
            waiting.append(i)
        else:
            ready.append(i)
            if len(ready) > take:
                break  # the slots are filled by ready states, and one more is waiting
    return ready + waiting


def _finish(progress: RunProgress) -> Finish:
    final_id = progress.final_snapshot()
    failed, error = progress.failure()
    if error is None and progress.is_done():
        return Finish(RunStatus.COMPLETED, final_id)
    conflict = progress.conflict if failed is None else None
    payload = conflict.payload() if conflict is not None else None
    return Finish(RunStatus.FAILED, final_id, error, payload)
