"""What `mfm backfill status` and `list` show: counts by phase, rates, ETA, and the
partitions that failed with their error codes — read from the journal and the plan only,
so it works from any machine with the store URLs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from mfm_dist.backfill.model import BackfillPlan
from mfm_dist.backfill.planner import now_ms
from mfm_dist.backfill.state import BackfillState, PartStatus

PROBLEMS = (PartStatus.FAILED, PartStatus.REJECTED, PartStatus.CANCELLED)


class FailedPartition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    partition: str
    status: str
    code: str | None
    run_id: str | None
    skipped: bool
    """True when the partition's run had failed before this issue (kept by `missing`)."""


class BackfillReport(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    phase: str
    issue: int
    op: str
    plan_id: str
    backend: str
    reprocess: str
    max_active: int
    rate: str | None
    partitions: int
    counts: dict[str, int]
    decisions: dict[str, int]
    started_runs: int
    elapsed_s: float
    started_per_s: float
    completed_per_s: float
    eta_s: float | None
    failed: list[FailedPartition]
    paused_by: str | None
    cancel_reason: str | None
    created_ms: int
    updated_ms: int
    finished_ms: int | None

    @property
    def done(self) -> int:
        return self.partitions - self.counts["pending"] - self.counts["running"]


def build_report(
    state: BackfillState, plan: BackfillPlan, *, at_ms: int | None = None
) -> BackfillReport:
    issue = state.issue
    assert issue is not None
    end = state.finished_ms or (at_ms if at_ms is not None else now_ms())
    elapsed = max(0.0, (end - state.issued_ms) / 1000.0)
    started = sum(n for _, n in state.claims)
    decided: dict[str, int] = {}
    for part in state.parts:
        decided[part.decision] = decided.get(part.decision, 0) + 1
    settled_here = sum(
        1
        for p in state.parts
        if p.status in (PartStatus.COMPLETED, PartStatus.FAILED, PartStatus.CANCELLED)
        and not p.decision.startswith("skip")
        and p.settled_ms is not None
        and p.settled_ms > state.issued_ms - 1
        and p.claimed_ms is not None
    )
    completed_rate = settled_here / elapsed if elapsed > 0 else 0.0
    counts = state.counts()
    left = counts["pending"] + counts["running"]
    eta = left / completed_rate if completed_rate > 0 and left and state.finished is None else None
    failed = [
        FailedPartition(
            partition=plan.partitions[i].value,
            status=p.status.value,
            code=p.code,
            run_id=None if p.status is PartStatus.REJECTED else plan.run_id(i, p.generation),
            skipped=p.decision.startswith("skip"),
        )
        for i, p in enumerate(state.parts)
        if p.status in PROBLEMS
    ]
    return BackfillReport(
        name=state.name,
        phase=state.phase.value,
        issue=issue.issue,
        op=issue.op,
        plan_id=issue.plan_id,
        backend=issue.backend,
        reprocess=issue.reprocess.value,
        max_active=issue.max_active,
        rate=issue.rate.text() if issue.rate else None,
        partitions=issue.partitions,
        counts=counts,
        decisions=decided,
        started_runs=started,
        elapsed_s=round(elapsed, 3),
        started_per_s=round(started / elapsed, 2) if elapsed > 0 else 0.0,
        completed_per_s=round(completed_rate, 2),
        eta_s=round(eta, 1) if eta is not None else None,
        failed=failed,
        paused_by=state.paused_by,
        cancel_reason=state.cancel.reason if state.cancel else None,
        created_ms=state.created_ms,
        updated_ms=state.updated_ms,
        finished_ms=state.finished_ms,
    )
