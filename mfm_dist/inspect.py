"""Read-only views of a run for people and tools: `mfm status`, `mfm runs`, progress."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from mfm_dist.config import RunConfig
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import result_from_history
from mfm_dist.errors import ErrorInfo
from mfm_dist.plan import ExecutionPlan
from mfm_dist.run import RunPhase


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


def run_report(
    history: RunHistory, plan: ExecutionPlan | None = None, run_config: RunConfig | None = None
) -> RunReport:
    """Per-state status of a run. With its plan, states not yet entered show as pending."""
    order = [str(s) for s in plan.canonical_order()] if plan is not None else list(history.states)
    skip_tags = set(run_config.skip_tags) if run_config is not None else set()
    tags = {}
    if plan is not None:
        tags = {str(n.id): set(n.state.meta().tags) for n in plan.graph.states}
    finished = history.completed is not None
    reports: list[StateReport] = []
    for state_id in order:
        record = history.states.get(state_id)
        if record is None or record.last is None:
            reports.append(StateReport(state_id=state_id, status=StateStatus.PENDING, attempts=0))
            continue
        last = record.last
        failure = next((a.error for a in reversed(record.attempts) if a.error is not None), None)
        if last.outcome == "completed":
            skipped = bool(tags.get(state_id, set()) & skip_tags)
            status = StateStatus.SKIPPED if skipped else StateStatus.COMPLETED
        elif last.outcome == "failed":
            status = StateStatus.FAILED if finished else StateStatus.RETRYING
        else:
            status = StateStatus.RUNNING
        reports.append(
            StateReport(
                state_id=state_id,
                status=status,
                attempts=len(record.attempts),
                snapshot_id=last.snapshot_id,
                last_error_code=failure.code if failure else None,
                last_error_message=failure.message if failure else None,
            )
        )
    counts: dict[str, int] = {s.value: 0 for s in StateStatus}
    for r in reports:
        counts[r.status.value] += 1
    result = result_from_history(history)
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
