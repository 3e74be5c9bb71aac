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

from mfm_dist.config import backoff_delay
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
) -> Decision:
    """Next actions for a run.

    `reserved` maps state → attempt number of dispatches not yet seen in the log
    and not yet expired (the caller drops expired ones). Orphans in the decision
    must be closed (`StateFailed{orphan_attempt_recovered}`) before acting on the
    rest; the caller then records them in `progress` and calls `decide` again.
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
    pending = {
        plan.position[s]
        for s, attempt in reserved.items()
        if s in plan.position and attempt >= progress.next_attempt[plan.position[s]]
    }
    busy = open_alive | pending
    decision.in_flight = len(busy)
    decision.waiting_on_leases = bool(open_alive)

    failing = progress.conflict is not None or any(
        i not in progress.completed and not progress.retry_allowed(i) for i in progress.last_error
    )
    if failing or progress.is_done():
        if not busy:
            decision.finish = _finish(progress, failing)
        return decision

    slots = progress.run_config.max_concurrency - len(busy)
    for i in range(len(plan)):
        if slots <= 0:
            break
        if i in progress.completed:
            continue
        if i in busy or not progress.preds_done(i):
            if not progress.fan_out:
                break  # sequential runs advance strictly in canonical order
            continue
        attempt = progress.next_attempt[i]
        countdown = 0.0
        error = progress.last_error.get(i)
        if error is not None:
            last = history.states[str(plan.order[i])].last
            delay = backoff_delay(progress.run_config.retry_policy.backoff, attempt - 1)
            closed = last.ts_closed if last is not None and last.ts_closed is not None else now_ms
            countdown = max(0.0, (closed + delay.total_millis - now_ms) / 1000.0)
        base_id, _ = progress.base_for(i)
        decision.dispatch.append(Dispatch(str(plan.order[i]), attempt, base_id, countdown))
        slots -= 1
    return decision


def _finish(progress: RunProgress, failing: bool) -> Finish:
    final_id = progress.final_snapshot()
    if not failing:
        return Finish(RunStatus.COMPLETED, final_id)
    conflict = progress.tracker.first_conflict() if progress.fan_out else None
    if conflict is not None:
        return Finish(RunStatus.FAILED, final_id, conflict.error(), conflict.payload())
    blocked = sorted(
        i
        for i in progress.last_error
        if i not in progress.completed and not progress.retry_allowed(i)
    )
    error = progress.last_error.get(blocked[0]) if blocked else None
    return Finish(RunStatus.FAILED, final_id, error)
