"""Read-only views of a run for people and tools: `mfm status`, `mfm runs`, progress."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from mfm_dist.config import RunConfig, backoff_delay
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import explained_from_history, result_from_history
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import ErrorInfo
from mfm_dist.plan import ExecutionPlan
from mfm_dist.results import RunPhase


class StateStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"


class StateReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    state_id: str
    status: StateStatus
    attempts: int
    snapshot_id: str | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    detail: str | None = None
    """Why the state is where it is, in words (waiting on …, running on … since …, …)."""
    waiting_on: str | None = None
    since_ms: int | None = None
    worker: str | None = None
    lease_expires_ms: int | None = None
    retry_at_ms: int | None = None


class RunReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    op_id: str
    phase: RunPhase
    started_ms: int
    head_seq: int
    manifest_id: str
    initial_snapshot_id: str
    final_snapshot_id: str | None
    failed_state: str | None = None
    error: ErrorInfo | None = None
    counts: dict[str, int]
    states: list[StateReport]


class LeaseView(Protocol):
    """What a backend knows about a running attempt (the distributed lease; read-only)."""

    @property
    def attempt(self) -> int: ...

    @property
    def worker(self) -> str: ...

    @property
    def expires_ms(self) -> int: ...


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def run_report(
    history: RunHistory,
    plan: ExecutionPlan | None = None,
    run_config: RunConfig | None = None,
    leases: Mapping[str, LeaseView] | None = None,
    snapshots: SnapshotStore | None = None,
) -> RunReport:
    """Per-state status of a run, with the reason for each state's status.

    With the plan, states not yet entered show as pending with what they wait on;
    with the run config, failures are told apart from retries (and their backoff);
    with `leases` (distributed runs), running attempts name their worker and expiry;
    with `snapshots` (and the plan and run config), a failed run whose history names no
    reason (a `Minimal`-profile merge conflict) is explained from its recorded deltas.
    """
    order = [str(s) for s in plan.canonical_order()] if plan is not None else list(history.states)
    skip_tags = set(run_config.skip_tags) if run_config is not None else set()
    tags: dict[str, set[str]] = {}
    if plan is not None and skip_tags:  # tags only tell skipped states from completed ones
        tags = {str(n.id): set(n.state.meta().tags) for n in plan.graph.states}
    compiled = plan.compiled if plan is not None else None
    finished = history.completed is not None
    reports: list[StateReport] = []
    by_id: dict[str, StateReport] = {}
    for i, state_id in enumerate(order):
        report = _state_report(state_id, history, run_config, leases, finished, tags, skip_tags)
        if report.status == StateStatus.PENDING:
            preds = [order[p] for p in sorted(compiled.preds[i])] if compiled is not None else []
            report = _pending_reason(report, preds, by_id, finished)
        by_id[state_id] = report
        reports.append(report)
    counts: dict[str, int] = {s.value: 0 for s in StateStatus}
    for r in reports:
        counts[r.status.value] += 1
    result = result_from_history(history, plan.compiled.position if plan is not None else None)
    if snapshots is not None and plan is not None and run_config is not None:
        result = explained_from_history(result, history, plan, run_config, snapshots)
    return RunReport(
        run_id=str(history.run_id),
        op_id=str(history.started.op_id),
        phase=result.phase,
        started_ms=history.started_ms,
        head_seq=history.head,
        manifest_id=str(history.started.manifest_id),
        initial_snapshot_id=str(history.started.initial_snapshot_id),
        final_snapshot_id=str(result.final_snapshot_id) if result.final_snapshot_id else None,
        failed_state=str(result.failed_state) if result.failed_state else None,
        error=result.error,
        counts=counts,
        states=reports,
    )


def _state_report(
    state_id: str,
    history: RunHistory,
    run_config: RunConfig | None,
    leases: Mapping[str, LeaseView] | None,
    finished: bool,
    tags: dict[str, set[str]],
    skip_tags: set[str],
) -> StateReport:
    record = history.states.get(state_id)
    if record is None or record.last is None:
        return StateReport(state_id=state_id, status=StateStatus.PENDING, attempts=0)
    last = record.last
    failure = next((a.error for a in reversed(record.attempts) if a.error is not None), None)
    base = {
        "state_id": state_id,
        "attempts": len(record.attempts),
        "snapshot_id": last.snapshot_id,
        "last_error_code": failure.code if failure else None,
        "last_error_message": failure.message if failure else None,
    }
    if last.outcome == "completed":
        skipped = bool(tags.get(state_id, set()) & skip_tags)
        status = StateStatus.SKIPPED if skipped else StateStatus.COMPLETED
        detail = "skipped by a skip tag" if skipped else None
        return StateReport(status=status, detail=detail, **base)
    if last.outcome is None:
        lease = leases.get(state_id) if leases is not None else None
        if leases is not None and (lease is None or lease.attempt != last.attempt):
            detail = (
                f"attempt {last.attempt} open since {_clock(last.ts_entered)} with no live "
                "lease: an orphan, recovered by the coordinator"
            )
            return StateReport(
                status=StateStatus.RUNNING, detail=detail, since_ms=last.ts_entered, **base
            )
        where = f" on {lease.worker}" if lease is not None else ""
        expiry = f", lease until {_clock(lease.expires_ms)}" if lease is not None else ""
        return StateReport(
            status=StateStatus.RUNNING,
            detail=f"attempt {last.attempt} running{where} since {_clock(last.ts_entered)}{expiry}",
            since_ms=last.ts_entered,
            worker=lease.worker if lease is not None else None,
            lease_expires_ms=lease.expires_ms if lease is not None else None,
            **base,
        )
    error = last.error
    code = error.code if error is not None else "unknown"
    handled = sum(  # attempts that failed in the handler; orphans don't count (see progress)
        1
        for a in record.attempts
        if a.error is not None and a.error.code != "orphan_attempt_recovered"
    )
    retryable = error is not None and (
        error.code == "orphan_attempt_recovered"
        or (
            error.retryable
            and (run_config is None or run_config.retry_policy.allows_retry(handled - 1))
        )
    )
    if finished or not retryable:
        return StateReport(status=StateStatus.FAILED, detail=f"failed with {code}", **base)
    retry_at = None
    if run_config is not None and last.ts_closed is not None:
        delay = backoff_delay(run_config.retry_policy.backoff, last.attempt)
        retry_at = last.ts_closed + delay.total_millis
    detail = f"attempt {last.attempt} failed with {code}; retry " + (
        f"not before {_clock(retry_at)}" if retry_at is not None else "pending"
    )
    return StateReport(status=StateStatus.RETRYING, detail=detail, retry_at_ms=retry_at, **base)


def _pending_reason(
    report: StateReport, preds: list[str], seen: dict[str, StateReport], finished: bool
) -> StateReport:
    blocking = [
        p for p in preds if seen.get(p) is not None and seen[p].status == StateStatus.FAILED
    ]
    if blocking:
        detail = f"blocked: predecessor {blocking[0]} failed"
        return report.model_copy(update={"detail": detail, "waiting_on": blocking[0]})
    waiting = [
        p
        for p in preds
        if seen.get(p) is None or seen[p].status not in (StateStatus.COMPLETED, StateStatus.SKIPPED)
    ]
    if waiting:
        return report.model_copy(
            update={"detail": f"waiting on {waiting[0]}", "waiting_on": waiting[0]}
        )
    detail = "never ran (the run ended first)" if finished else "ready: waiting for a free slot"
    return report.model_copy(update={"detail": detail})
