"""`verify_run`: re-check a whole recorded run, read-only (`mfm verify`).

It re-derives everything an auditor needs from the stores alone: envelope rules
and contiguous seqs, every referenced artifact present and hash-valid, every
snapshot canonical and secret-free, each attempt's base equal to the base the
plan implies, and the final snapshot equal to the recomputed merge.

It scales with the run: the log is read in chunks into a compact history (no list of
every decoded envelope), the artifacts each chunk references are fetched in parallel
(an S3 round trip per snapshot would otherwise dominate), every snapshot is read and
checked once and kept in a large cache for the base and merge checks, and each completed
state's delta is computed once.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.canonical import check_canonical_bytes
from mfm_dist.config import RunConfig
from mfm_dist.engine.cancellation import CANCELLED_CODE
from mfm_dist.engine.history import LOAD_CHUNK, RunHistory, read_chunks
from mfm_dist.engine.lifecycle import aborted_error, load_run
from mfm_dist.engine.merge import compute_delta
from mfm_dist.engine.progress import MAX_ORPHAN_RECOVERIES, ORPHAN_CODE, RunProgress
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import MfmError, NotFound
from mfm_dist.events import DomainEvent, EventEnvelope, RunStatus, StateFailed
from mfm_dist.ids import RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.plan import CompiledPlan
from mfm_dist.stores.base import EventStore


class Violation(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    seq: int | None = None
    state_id: str | None = None


class VerifyReport(BaseModel):
    run_id: str
    ok: bool
    violations: list[Violation] = Field(default_factory=list)
    checked: dict[str, int] = Field(default_factory=dict)


def _violation(exc: MfmError, *, state_id: str | None = None) -> Violation:
    details = exc.info.details if isinstance(exc.info.details, dict) else {}
    seq = details.get("seq") if isinstance(details.get("seq"), int) else None
    return Violation(code=exc.info.code, message=exc.info.message, seq=seq, state_id=state_id)


FETCH_THREADS = 16
"""Artifact reads in flight at once (they are independent; the store's latency dominates)."""
CACHE_BYTES = 64 * 1024 * 1024
"""Verify's snapshot cache (canonical JSON bytes): a run's snapshots are read once."""
STATE_BATCH = 1024
"""States whose snapshots are fetched together before their bases are checked."""


class _Ref(NamedTuple):
    """One artifact reference of the log, in log order: how to check it and where it is."""

    artifact_id: str
    how: str  # "snapshot" | "json" | "blob"
    seq: int | None
    state_id: str | None


def _refs(env: EventEnvelope) -> list[_Ref]:
    ev = env.event
    sid = str(env.state_id) if env.state_id is not None else None
    out: list[_Ref] = []
    if hasattr(ev, "base_snapshot_id"):
        out.append(_Ref(str(ev.base_snapshot_id), "snapshot", env.seq, sid))
    if hasattr(ev, "context_snapshot_id"):
        out.append(_Ref(str(ev.context_snapshot_id), "snapshot", env.seq, sid))
    if isinstance(ev, StateFailed) and ev.failure_snapshot_id is not None:
        out.append(_Ref(str(ev.failure_snapshot_id), "snapshot", env.seq, sid))
    if isinstance(ev, DomainEvent):
        if ev.payload_ref is not None:
            out.append(_Ref(str(ev.payload_ref), "json", env.seq, None))
        if ev.name == "fact_recorded" and isinstance(ev.payload, dict):
            payload_id = str(ev.payload.get("payload_id", ""))
            key = str(ev.payload.get("key", ""))
            how = "blob" if key.startswith("mfm:random_bytes|") else "json"
            out.append(_Ref(payload_id, how, env.seq, None))
    return out


class _ArtifactChecker:
    """Checks the artifacts of the log's references: fetched in parallel, a chunk of the log
    at a time, then judged in log order — so the report is the one a sequential check
    gives: a reference is skipped once its artifact checked out, and every reference to
    an artifact that does not is reported."""

    def __init__(
        self, artifacts: ArtifactStore, snapshots: SnapshotStore, pool: ThreadPoolExecutor
    ) -> None:
        self.artifacts = artifacts
        self.snapshots = snapshots
        self.pool = pool
        self.checked: set[str] = set()
        self.found: list[Violation] = []

    def _fetch(self, ref: _Ref) -> MfmError | None:
        try:
            if ref.how == "snapshot":
                self.snapshots.load(ref.artifact_id)
            elif ref.how == "json":  # the read's checks, without building the value
                check_canonical_bytes(self.artifacts.get(ref.artifact_id), "fact payload")
            else:
                self.artifacts.get(ref.artifact_id)
        except MfmError as exc:
            return exc
        return None

    def check(self, refs: list[_Ref]) -> None:
        todo: dict[tuple[str, str], _Ref] = {}
        for ref in refs:
            if ref.artifact_id not in self.checked:
                todo.setdefault((ref.how, ref.artifact_id), ref)
        # Snapshots: their stored objects (full snapshots, link records) are read in
        # parallel, then loaded in log order, so each linked one is rebuilt from the one
        # before it in memory (docs/storage.md#snapshot-links). Other artifacts: in parallel.
        snapshot_refs = [r for r in todo.values() if r.how == "snapshot"]
        self.snapshots.prefetch(
            [r.artifact_id for r in snapshot_refs],
            lambda fetch, ids: _batched_map(self.pool, fetch, ids),
        )
        others = [r for r in todo.values() if r.how != "snapshot"]
        fetched = [self._fetch(r) for r in snapshot_refs]
        fetched += _batched_map(self.pool, self._fetch, others)
        results = dict(
            zip(((r.how, r.artifact_id) for r in snapshot_refs + others), fetched, strict=True)
        )
        for ref in refs:
            if ref.artifact_id in self.checked:
                continue
            exc = results[(ref.how, ref.artifact_id)]
            if exc is None:
                self.checked.add(ref.artifact_id)
                continue
            what = "snapshot" if ref.how == "snapshot" else "artifact"
            self.found.append(
                Violation(
                    code=exc.info.code,
                    message=f"{what} {ref.artifact_id}: {exc.info.message}",
                    seq=ref.seq,
                    state_id=ref.state_id,
                )
            )


def verify_run(
    events: EventStore,
    artifacts: ArtifactStore,
    registry: OperationRegistry | None,
    run_id: str,
) -> VerifyReport:
    rid = RunId(run_id)
    report = VerifyReport(run_id=str(rid), ok=False)
    found = report.violations
    snapshots = SnapshotStore(artifacts, cache_size=1 << 22, cache_bytes=CACHE_BYTES)
    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="mfm-verify") as pool:
        checker = _ArtifactChecker(artifacts, snapshots, pool)
        # 1. the log (chunk by chunk) and every artifact it references.
        history: RunHistory | None = None
        try:
            for chunk in read_chunks(events, rid, 1, LOAD_CHUNK):
                if history is None:
                    history = RunHistory.from_envelopes(rid, chunk, compact=True)
                    initial = str(history.started.initial_snapshot_id)
                    checker.check([_Ref(initial, "snapshot", 1, None)])
                else:
                    history.extend(chunk)
                checker.check([ref for env in chunk for ref in _refs(env)])
            if history is None:
                raise NotFound(f"run {rid} not found", code="run_not_found")
        except MfmError as exc:
            found.append(_violation(exc))
            return report
        found.extend(checker.found)
        report.checked["events"] = history.head
        checked_artifacts = checker.checked
        if history.completed is not None and history.completed.final_snapshot_id is not None:
            checker.found = []
            checker.check(
                [_Ref(str(history.completed.final_snapshot_id), "snapshot", history.head, None)]
            )
            found.extend(checker.found)

        # 2. manifest and plan, then bases and the final merge.
        if registry is None:
            found.append(
                Violation(code="verify_plan_unavailable", message="no operation registry")
            )
        elif not found:
            try:
                loaded = load_run(events, artifacts, registry, rid, history=history)
                checked_artifacts.add(str(history.started.manifest_id))
            except MfmError as exc:
                found.append(_violation(exc))
            else:
                prefetch = _prefetcher(snapshots, pool)
                _check_bases_and_final(
                    loaded.plan.compiled,
                    loaded.manifest.run_config,
                    history,
                    snapshots,
                    found,
                    prefetch,
                )
    report.checked["artifacts"] = len(checked_artifacts)
    report.checked["states"] = sum(1 for r in history.states.values() if r.completed)
    report.ok = not found
    return report


def _prefetcher(
    snapshots: SnapshotStore, pool: ThreadPoolExecutor
) -> Callable[[list[str]], None]:
    def prefetch(ids: list[str]) -> None:
        snapshots.prefetch(ids, lambda fetch, todo: _batched_map(pool, fetch, todo))

    return prefetch


T = TypeVar("T")
R = TypeVar("R")


def _batched_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: list[T]) -> list[R]:
    """`[fn(x) for x in items]` on the pool's threads, a few tasks per thread (a future per
    item costs more than reading a small artifact from a fast store)."""
    if len(items) < 2:
        return [fn(x) for x in items]
    step = max(1, -(-len(items) // (FETCH_THREADS * 4)))
    chunks = [items[k : k + step] for k in range(0, len(items), step)]
    return [r for part in pool.map(lambda chunk: [fn(x) for x in chunk], chunks) for r in part]


def _check_bases_and_final(
    plan: CompiledPlan,
    run_config: RunConfig,
    history: RunHistory,
    snapshots: SnapshotStore,
    found: list[Violation],
    prefetch: Callable[[list[str]], None] | None = None,
) -> None:
    progress = RunProgress(plan, run_config, snapshots, str(history.started.initial_snapshot_id))

    # Replay completions in canonical order so each expected base sees exactly its inputs.
    order = sorted(history.states, key=lambda s: plan.position[s])
    for k, state_id in enumerate(order):
        if prefetch is not None and k % STATE_BATCH == 0:
            # The snapshots the next batch diffs (usually still cached from step 1).
            ids: list[str] = []
            for later in order[k : k + STATE_BATCH]:
                last_att = history.states[later].last
                if last_att is not None and last_att.snapshot_id is not None:
                    ids += [last_att.base_snapshot_id, last_att.snapshot_id]
            prefetch(ids)
        record = history.states[state_id]
        i = plan.position[state_id]
        missing = [p for p in plan.preds[i] if p not in progress.completed]
        if missing:
            found.append(
                Violation(
                    code="verify_dependency_not_completed",
                    message=f"{state_id} ran before {plan.order[missing[0]]} completed",
                    state_id=state_id,
                )
            )
            return
        expected = progress.expected_base_id(i)
        for att in record.attempts:
            if att.base_snapshot_id != expected:
                found.append(
                    Violation(
                        code="verify_base_mismatch",
                        message=f"{state_id} attempt {att.attempt} started from "
                        f"{att.base_snapshot_id}, expected {expected}",
                        seq=att.entered_seq,
                        state_id=state_id,
                    )
                )
        last = record.last
        if last is not None and last.outcome == "completed" and last.snapshot_id is not None:
            delta = compute_delta(
                snapshots.load(last.base_snapshot_id), snapshots.load(last.snapshot_id)
            )
            progress.record_completed(i, last.snapshot_id, delta)
    if history.completed is None:
        return
    # Judge the recorded outcome with the same rules the engines use (the progress above
    # holds every completion already: only the attempts and failures are added).
    progress.sync(history)
    if history.completed.status == RunStatus.COMPLETED and not progress.succeeded():
        found.append(
            Violation(
                code="verify_completion_unjustified",
                message="run recorded Completed, but states are missing, failed or conflict",
                seq=history.head,
            )
        )
        return
    # A run ended by the coordinator for a fault that can never heal (its code recorded in
    # `run_aborted`) may end with nothing failed and states left that could have run.
    aborted = aborted_error(history) is not None
    _check_cancellation(history, found)
    failed = history.completed.status == RunStatus.FAILED
    if failed and not aborted and progress.failure() == (None, None):
        found.append(
            Violation(
                code="verify_failure_unexplained",
                message="run recorded Failed without a failed state or a merge conflict",
                seq=history.head,
            )
        )
    if failed and not aborted:
        _check_ended_early(progress, history, found)
    _check_retries(plan, run_config, history, progress, found)
    expected_final = progress.final_snapshot(store=False)
    if str(history.completed.final_snapshot_id) != expected_final:
        found.append(
            Violation(
                code="verify_final_snapshot_mismatch",
                message=f"final snapshot {history.completed.final_snapshot_id} "
                f"!= recomputed merge {expected_final}",
                seq=history.head,
            )
        )


def _check_cancellation(history: RunHistory, found: list[Violation]) -> None:
    """`run_cancelled` closes only attempts that were open when the cancel was requested.
    (The event guards, re-checked when the history is read, already hold the rest: one
    request, nothing entered after it, `Cancelled` if and only if requested.)"""
    requested_at = history.cancel_seq
    for state_id, record in history.states.items():
        for att in record.attempts:
            if att.error is None or att.error.code != CANCELLED_CODE:
                continue
            if requested_at is None or att.entered_seq > requested_at:
                found.append(
                    Violation(
                        code="verify_cancel_unrequested",
                        message=f"{state_id} attempt {att.attempt} was closed as cancelled "
                        "without an earlier cancel request",
                        seq=att.entered_seq,
                        state_id=state_id,
                    )
                )


def _check_ended_early(progress: RunProgress, history: RunHistory, found: list[Violation]) -> None:
    """A failed run must have run everything the rules let it run: in fan-out every state
    not downstream of a failure or a conflict; in sequential mode up to the failed state."""
    plan = progress.plan
    if progress.fan_out:
        left = [i for i in range(len(plan)) if progress.runnable(i)]
    else:
        first = next((i for i in range(len(plan)) if i not in progress.completed), None)
        left = [first] if first is not None and not progress.failed_for_good(first) else []
    if left:
        found.append(
            Violation(
                code="verify_run_ended_early",
                message=f"run recorded Failed while {plan.order[left[0]]} could still run",
                seq=history.head,
                state_id=str(plan.order[left[0]]),
            )
        )


def _check_retries(
    plan: CompiledPlan,
    run_config: RunConfig,
    history: RunHistory,
    progress: RunProgress,
    found: list[Violation],
) -> None:
    """Every retry was allowed by the policy, and no state ran with conflicting ancestors."""
    policy = run_config.retry_policy
    for state_id, record in history.states.items():
        handled = orphans = 0
        for previous, att in zip(record.attempts, record.attempts[1:], strict=False):
            error = previous.error
            if error is None:
                continue
            if error.code == ORPHAN_CODE:
                orphans += 1
                allowed = orphans <= MAX_ORPHAN_RECOVERIES
            else:
                handled += 1
                orphans = 0
                allowed = error.retryable and policy.allows_retry(handled - 1)
            if not allowed:
                found.append(
                    Violation(
                        code="verify_retry_not_allowed",
                        message=f"{state_id} attempt {att.attempt} ran after a failure the "
                        "retry policy does not retry",
                        seq=att.entered_seq,
                        state_id=state_id,
                    )
                )
                break
        i = plan.position[state_id]
        if progress.fan_out and progress.tracker.blocks(i):
            found.append(
                Violation(
                    code="verify_ran_after_conflict",
                    message=f"{state_id} ran although two of its ancestors conflict",
                    seq=record.attempts[0].entered_seq,
                    state_id=state_id,
                )
            )
