"""Planning a backfill: validate every partition, decide what happens to each one (given the
runs that already exist and the reprocess mode), store the plan, and record the issue.

Reprocess modes decide what happens to a partition that already has a run:

| existing run | `missing` (default) | `failed` | `all` |
| --- | --- | --- | --- |
| none | run | run | run |
| running | attach | attach | attach |
| completed | skip | skip | rerun |
| failed / cancelled | skip | rerun | rerun |

A rerun uses the partition's next key generation. Re-issuing a backfill whose plan and
options are unchanged while it is still going records nothing (`unchanged`): it can
never start a second run for a partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.backfill.model import (
    CODEC,
    Backend,
    BackfillError,
    BackfillPlan,
    Decision,
    Issued,
    Partition,
    Rate,
    Reprocess,
    backfill_journal,
    check_name,
)
from mfm_dist.backfill.state import BackfillState, Phase, fold
from mfm_dist.canonical import artifact_id_of_bytes
from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import prepare_run
from mfm_dist.errors import ConcurrencyError, MfmError
from mfm_dist.ids import RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.results import RunPhase, RunSummary
from mfm_dist.stores.base import EventStore

APPEND_ATTEMPTS = 20


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def load_state(events: EventStore, name: str) -> BackfillState:
    journal = backfill_journal(name)
    return fold(name, events.journal_read(journal))


def require_state(events: EventStore, name: str) -> BackfillState:
    state = load_state(events, name)
    if not state.exists:
        raise BackfillError(
            "backfill_not_found", f"no backfill named {name!r} in {events.url or 'this store'}"
        )
    return state


def append_records(
    events: EventStore,
    name: str,
    make: Callable[[BackfillState], list[object] | None],
) -> tuple[BackfillState, list[object]]:
    """Read the backfill, let `make` decide what to record given that state (None: refuse
    nothing, record nothing), and append it guarded by the head it read; re-read and
    decide again when another writer appended meanwhile."""
    journal = backfill_journal(name)
    for _ in range(APPEND_ATTEMPTS):
        state = load_state(events, name)
        records = make(state)
        if not records:
            return state, []
        ts = now_ms()
        drafts = [CODEC.draft(r, ts) for r in records]  # type: ignore[arg-type]
        try:
            entries = events.journal_append(journal, state.head, drafts)
        except ConcurrencyError as exc:
            if exc.code != "expected_seq_mismatch":
                raise
            continue
        return fold(name, entries, state), records
    raise BackfillError(
        "backfill_busy", f"backfill {name}: the journal kept changing; try again", retryable=True
    )


@dataclass(frozen=True)
class CreateRequest:
    name: str
    op: str
    version: str | None
    config: RunConfig
    field: str | None
    source: str
    partitions: list[Partition]
    reprocess: Reprocess = Reprocess.MISSING
    max_active: int = 16
    rate: Rate | None = None
    backend: Backend = "local"


@dataclass(frozen=True)
class PlannedPartition:
    index: int
    value: str
    decision: Decision
    generation: int
    run_id: str
    """The run the partition gets (a new one for `run` and reruns)."""
    existing_run: str | None = None
    existing_phase: RunPhase | None = None


@dataclass
class IssueResult:
    plan: BackfillPlan
    plan_id: str
    outcome: Literal["created", "reissued", "unchanged", "dry_run"]
    rows: list[PlannedPartition]
    state: BackfillState | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        out = {"run": 0, "skip": 0, "attach": 0, "rerun": 0}
        for row in self.rows:
            out[row.decision.split("_", 1)[0]] += 1
        return out

    @property
    def new_runs(self) -> int:
        totals = self.totals()
        return totals["run"] + totals["rerun"]


def build_plan(registry: OperationRegistry, request: CreateRequest) -> BackfillPlan:
    """Validate the op and every partition's input (each must expand to a valid plan)
    before anything is stored; a refusal names the partition."""
    check_name(request.name)
    build = registry.build_info()
    op_version = ""
    for number, part in enumerate(request.partitions):
        try:
            prepared = prepare_run(
                registry,
                request.op,
                part.input,
                request.config,
                version=request.version,
                build=build,
            )
        except MfmError as exc:
            if number == 0 and exc.info.code == "operation_not_found":
                raise
            raise BackfillError(
                exc.info.code,
                f"partition {part.value!r}: {exc.info.message}",
                details={"partition": part.value},
            ) from None
        op_version = op_version or prepared.manifest.op_version
    return BackfillPlan(
        name=request.name,
        op=request.op,
        version=request.version,
        op_version=op_version,
        config=request.config,
        field=request.field,
        source=request.source,
        partitions=request.partitions,
    )


def generations_of(
    state: BackfillState, artifacts: ArtifactStore, plan_cache: dict[str, BackfillPlan]
) -> dict[str, int]:
    """The current key generation of every partition value the backfill has planned."""
    if state.issue is None:
        return {}
    previous = plan_cache.get(state.issue.plan_id) or BackfillPlan.load(
        artifacts, state.issue.plan_id
    )
    return {
        previous.partitions[i].value: part.generation
        for i, part in enumerate(state.parts)
        if part.generation
    }


def classify(
    events: EventStore,
    plan: BackfillPlan,
    generations: dict[str, int],
    mode: Reprocess,
) -> list[PlannedPartition]:
    """What happens to each partition given the runs that exist now (one bulk lookup)."""
    gens = [generations.get(p.value, 0) for p in plan.partitions]
    ids = [plan.run_id(i, g) for i, g in enumerate(gens)]
    found: dict[str, RunSummary] = events.run_summaries([RunId(r) for r in ids])
    rows = []
    for index, (part, gen, rid) in enumerate(zip(plan.partitions, gens, ids, strict=True)):
        summary = found.get(rid)
        if summary is None:
            rows.append(PlannedPartition(index, part.value, "run", gen, rid))
            continue
        phase = summary.phase
        decision = _decide(phase, mode)
        new_gen = gen + 1 if decision.startswith("rerun") else gen
        run_id = plan.run_id(index, new_gen) if new_gen != gen else rid
        rows.append(PlannedPartition(index, part.value, decision, new_gen, run_id, rid, phase))
    return rows


def _decide(phase: RunPhase, mode: Reprocess) -> Decision:
    if phase is RunPhase.RUNNING:
        return "attach"
    if phase is RunPhase.COMPLETED:
        return "rerun_completed" if mode is Reprocess.ALL else "skip_completed"
    if phase is RunPhase.CANCELLED:
        return "skip_cancelled" if mode is Reprocess.MISSING else "rerun_cancelled"
    return "skip_failed" if mode is Reprocess.MISSING else "rerun_failed"


def issued_record(
    issue: int,
    plan_id: str,
    plan: BackfillPlan,
    rows: list[PlannedPartition],
    request: CreateRequest,
    origin: Literal["create", "retry"],
) -> Issued:
    decisions: dict[str, list[int]] = {}
    for row in rows:
        if row.decision != "run":
            decisions.setdefault(row.decision, []).append(row.index)
    return Issued(
        issue=issue,
        plan_id=plan_id,
        op=plan.op,
        partitions=len(plan.partitions),
        reprocess=request.reprocess,
        max_active=request.max_active,
        rate=request.rate,
        backend=request.backend,
        origin=origin,
        decisions=decisions,
        generations=[(row.index, row.generation) for row in rows if row.generation],
    )


def same_options(issue: Issued, request: CreateRequest) -> bool:
    return (
        issue.reprocess == request.reprocess
        and issue.max_active == request.max_active
        and issue.rate == request.rate
        and issue.backend == request.backend
    )


def create(
    events: EventStore,
    artifacts: ArtifactStore,
    registry: OperationRegistry,
    request: CreateRequest,
    *,
    dry_run: bool = False,
    origin: Literal["create", "retry"] = "create",
    plan: BackfillPlan | None = None,
) -> IssueResult:
    """Plan and (unless `dry_run`) record an issue of the backfill `request.name`.

    * new name: the plan is stored and the first issue recorded (`created`);
    * an existing backfill that is still going: the same plan and options change nothing
      (`unchanged`), anything else is refused (`backfill_active`: pause/cancel it or wait);
    * a finished one (completed or cancelled): a new issue over the new plan (`reissued`),
      each partition decided by the reprocess mode against the runs that exist."""
    t0 = time.perf_counter()
    the_plan = plan if plan is not None else build_plan(registry, request)
    t1 = time.perf_counter()
    data = the_plan.canonical()
    plan_id = str(artifact_id_of_bytes(data))
    cache = {plan_id: the_plan}
    timings = {"validate_s": t1 - t0}

    def decide(state: BackfillState) -> tuple[list[PlannedPartition], Issued | None, str]:
        if state.exists and state.phase not in (Phase.COMPLETED, Phase.CANCELLED):
            assert state.issue is not None
            if origin == "create":
                if state.issue.plan_id == plan_id and same_options(state.issue, request):
                    return [], None, "unchanged"
                raise BackfillError(
                    "backfill_active",
                    f"backfill {request.name} is {state.phase.value} with another plan or "
                    "other options; wait for it, or cancel it first",
                )
        gens = generations_of(state, artifacts, cache)
        rows = classify(events, the_plan, gens, request.reprocess)
        issue = (state.issue.issue + 1) if state.issue is not None else 1
        record = issued_record(issue, plan_id, the_plan, rows, request, origin)
        return rows, record, "reissued" if state.exists else "created"

    if dry_run:
        state = load_state(events, request.name)
        rows, _, outcome = decide(state)
        timings["classify_s"] = time.perf_counter() - t1
        if outcome == "unchanged":
            gens = generations_of(state, artifacts, cache)
            rows = classify(events, the_plan, gens, request.reprocess)
        return IssueResult(the_plan, plan_id, "dry_run", rows, state, timings)

    stored = str(the_plan.store(artifacts))
    if stored != plan_id:  # pragma: no cover - the store verifies content addresses
        raise BackfillError("backfill_plan_invalid", "the stored plan has another id")
    decided: list[tuple[list[PlannedPartition], str]] = []

    def make(state: BackfillState) -> list[object] | None:
        rows, record, outcome = decide(state)
        decided.append((rows, outcome))
        return [record] if record is not None else None

    state, _ = append_records(events, request.name, make)
    timings["classify_s"] = time.perf_counter() - t1
    rows_out, outcome = decided[-1]
    kind: Literal["created", "reissued", "unchanged"] = (
        "created" if outcome == "created" else "reissued" if outcome == "reissued" else "unchanged"
    )
    return IssueResult(the_plan, plan_id, kind, rows_out, state, timings)


def retry_failed(
    events: EventStore, artifacts: ArtifactStore, registry: OperationRegistry, name: str
) -> IssueResult:
    """A new issue of the current plan in `failed` mode: failed and cancelled partitions get
    a new key generation, rejected ones are submitted again, the rest is unchanged."""
    state = require_state(events, name)
    assert state.issue is not None
    if state.phase in (Phase.CANCELLING, Phase.CANCELLED):
        raise BackfillError(
            "backfill_cancelled",
            f"backfill {name} was cancelled; issue it again with `mfm backfill create`",
        )
    plan = BackfillPlan.load(artifacts, state.issue.plan_id)
    request = CreateRequest(
        name=name,
        op=plan.op,
        version=plan.version,
        config=plan.config,
        field=plan.field,
        source=plan.source,
        partitions=plan.partitions,
        reprocess=Reprocess.FAILED,
        max_active=state.issue.max_active,
        rate=state.issue.rate,
        backend=state.issue.backend,
    )
    return create(events, artifacts, registry, request, origin="retry", plan=plan)
