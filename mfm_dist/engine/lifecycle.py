"""Run lifecycle steps every engine shares: preparing, validating and recording a start,
and loading a run for resume with every check of docs/execution.md#resume done before any append.
"""

from __future__ import annotations

import contextlib
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from mfm_dist.artifacts import ArtifactKind, ArtifactStore, get_json
from mfm_dist.canonical import JsonValue, artifact_id_of_bytes, canonical_bytes
from mfm_dist.config import RunConfig
from mfm_dist.engine.cancellation import CancelRequest, cancelled_error
from mfm_dist.engine.drafts import failed_drafts, now_millis
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.merge import MergeConflict
from mfm_dist.engine.progress import RunProgress
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import (
    Corruption,
    ErrorInfo,
    InvalidInput,
    MfmError,
    NotFound,
    RunError,
)
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
)
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.manifest import BuildInfo, RunManifest
from mfm_dist.operations import OperationRegistry, Pipeline, input_params_for
from mfm_dist.plan import ExecutionPlan
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.stores.base import EventStore
from mfm_dist.submission import (
    RUN_SUBMITTED_EVENT,
    SubmissionRecord,
    check_labels,
    fingerprint,
)
from mfm_dist.submission import conflict as idempotency_conflict

CONFLICT_EVENT = "context_merge_conflict"
RUN_ABORTED_EVENT = "run_aborted"
"""Run-level domain event written when a run is ended because it can never make progress
(its manifest is gone, the deployed code expands another plan): `{"error": ErrorInfo}`.
Always kept, whatever the event profile: the history must say why the run ended."""


@dataclass
class PreparedRun:
    """Everything `ExecutionEngine.start` needs, derived from a target and an input."""

    plan: ExecutionPlan
    run_config: RunConfig
    manifest: RunManifest
    manifest_id: ArtifactId
    initial_context: dict[str, JsonValue]


def prepare_run(
    registry: OperationRegistry,
    target: str,
    run_input: JsonValue,
    run_config: RunConfig,
    *,
    version: str | None = None,
    build: BuildInfo | None = None,
) -> PreparedRun:
    """Resolve an op (or a registered pipeline) and build its manifest, plan and context.

    A single op runs as a one-step pipeline whose `op_config` is the input; the
    initial context is `{"input": <input>}` either way.
    """
    pipeline = registry.pipeline(target) if version is None else None
    if pipeline is None:
        pipeline = Pipeline.single(registry.get(target, version), run_input)
    manifest = RunManifest(
        op_id=pipeline.machine_id,
        op_version=pipeline.pipeline_version,
        input_params=input_params_for(pipeline, run_input),
        run_config=run_config,
        build=build if build is not None else registry.build_info(),
    )
    manifest_id = manifest.manifest_id()
    plan = registry.plan_for(pipeline, run_config)
    return PreparedRun(plan, run_config, manifest, manifest_id, {"input": run_input})


def store_manifest(artifacts: ArtifactStore, manifest: RunManifest) -> ArtifactId:
    return artifacts.put(ArtifactKind.MANIFEST, manifest.canonical())


def validate_start(
    artifacts: ArtifactStore,
    *,
    registry: OperationRegistry | None = None,
    plan: ExecutionPlan,
    run_config: RunConfig,
    manifest: RunManifest,
    manifest_id: str,
    initial_context: Mapping[str, JsonValue],
    manifest_just_stored: bool = False,
) -> bytes:
    """Every check before a write (docs/plans.md#starting-a-run); returns the initial
    snapshot bytes.

    `manifest_just_stored`: the caller has just put these very bytes (a create-only put
    that verifies an existing object), so reading them back is skipped."""
    RunConfig.model_validate(run_config.model_dump(mode="json"))
    data = manifest.canonical()
    if artifact_id_of_bytes(data) != manifest_id:
        raise RunError("manifest_id_mismatch", "manifest does not hash to manifest_id")
    if str(manifest.op_id) != str(plan.op_id):
        raise RunError(
            "manifest_op_id_mismatch", f"manifest op {manifest.op_id} != plan op {plan.op_id}"
        )
    if manifest.run_config != run_config:
        raise RunError("run_config_mismatch", "manifest run_config differs from the run config")
    plan.validate()
    if registry is not None:
        # The plan must be the one any process re-derives from the manifest (resume, workers).
        derived = registry.plan_from_input_params(manifest.input_params, manifest.run_config)
        if derived.fingerprint() != plan.fingerprint():
            raise RunError(
                "plan_mismatch", "the plan differs from the one the manifest's pipeline expands to"
            )
    if manifest_just_stored:
        pass
    elif not artifacts.exists(manifest_id):
        raise NotFound(f"manifest {manifest_id} is not stored", code="manifest_not_found")
    elif artifacts.get(manifest_id) != data:
        raise RunError("manifest_artifact_mismatch", "stored manifest differs from the request")
    if not isinstance(initial_context, Mapping):
        raise InvalidInput("initial_context_invalid", "the initial context must be a JSON object")
    return canonical_bytes(dict(initial_context), "initial context")


def record_run_start(
    events: EventStore,
    artifacts: ArtifactStore,
    *,
    plan: ExecutionPlan,
    manifest_id: str,
    initial_snapshot: bytes,
    run_id: RunId | None = None,
    submission: SubmissionRecord | None = None,
) -> tuple[RunId, ArtifactId]:
    """Mint the run id, store the initial snapshot and append `RunStarted` (seq 1) — with
    the `run_submitted` record (seq 2) in the same atomic append when given."""
    rid = run_id or RunId.mint()
    initial_id = artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, initial_snapshot)
    started = RunStarted(
        op_id=plan.op_id, manifest_id=ArtifactId(manifest_id), initial_snapshot_id=initial_id
    )
    ts = now_millis()
    batch = [EventDraft(event=started, ts_millis=ts).at(rid, 1)]
    if submission is not None:
        batch.append(EventDraft(event=submission.event(), ts_millis=ts).at(rid, 2))
    events.append(rid, 0, batch)
    return rid, initial_id


def labelled_submission(
    prepared: PreparedRun, run_input: JsonValue, labels: Mapping[str, str]
) -> SubmissionRecord | None:
    """The `run_submitted` record of a labelled run started in-process (None without
    labels: the history then starts exactly as it always did). Labels are checked."""
    if not labels:
        return None
    manifest = prepared.manifest
    return SubmissionRecord(
        fingerprint=fingerprint(
            str(manifest.op_id), manifest.op_version, run_input, prepared.run_config
        ),
        labels=check_labels(dict(labels)),
        submitted_ms=now_millis(),
    )


def submitted_as(events: EventStore, run_id: RunId, request: SubmissionRecord) -> bool:
    """Whether a keyed submission's run was started already: True if it was, with the same
    request; `idempotency_conflict` if its `run_submitted` names another request (another
    payload, or other labels or completion callback: `SubmissionRecord.same_request`)."""
    head = events.read_range(run_id, 1, 2)
    if not head:
        return False
    record = submission_of(head)
    if record is not None and not record.same_request(request):
        raise idempotency_conflict()
    return True


def stored_and_validated(
    artifacts: ArtifactStore, prepared: PreparedRun
) -> tuple[ArtifactId, bytes]:
    """Store the prepared run's manifest, then run every start check against it: its id
    and the initial snapshot bytes `record_run_start` needs."""
    manifest_id = store_manifest(artifacts, prepared.manifest)
    initial = validate_start(
        artifacts,
        plan=prepared.plan,
        run_config=prepared.run_config,
        manifest=prepared.manifest,
        manifest_id=manifest_id,
        initial_context=prepared.initial_context,
        manifest_just_stored=True,
    )
    return manifest_id, initial


def submission_of(envelopes: Sequence[EventEnvelope]) -> SubmissionRecord | None:
    """The run's `run_submitted` record (seq 2), if it was started with one."""
    for env in envelopes[1:2]:
        ev = env.event
        if isinstance(ev, DomainEvent) and ev.name == RUN_SUBMITTED_EVENT and env.state_id is None:
            with contextlib.suppress(ValueError):
                return SubmissionRecord.model_validate(ev.payload)
    return None


def open_in_entry_order(history: RunHistory) -> list[tuple[str, int]]:
    """The run's open attempts as `(state_id, attempt)`, in the order they were entered."""
    rows = sorted(history.open_attempts(), key=lambda row: row[1].entered_seq)
    return [(state_id, att.attempt) for state_id, att in rows]


def close_open_attempts(history: RunHistory, error: ErrorInfo) -> list[EventDraft]:
    """`StateFailed{error}` for every open attempt, in the order they were entered."""
    return failed_drafts(open_in_entry_order(history), error)


def abort_drafts(
    history: RunHistory, error: ErrorInfo, final_snapshot_id: str | None
) -> list[EventDraft]:
    """The events that end a run which can never make progress: its open attempts closed
    with `error`, `run_aborted{error}`, then `RunCompleted{Failed}` whose final snapshot is
    the merge of what completed when the plan is known, else the initial snapshot."""
    final = final_snapshot_id or str(history.started.initial_snapshot_id)
    payload: JsonValue = {"error": error.model_dump(mode="json", exclude_none=True)}
    return [
        *close_open_attempts(history, error),
        EventDraft(
            event=DomainEvent(name=RUN_ABORTED_EVENT, payload=payload), ts_millis=now_millis()
        ),
        EventDraft(
            event=RunCompleted(status=RunStatus.FAILED, final_snapshot_id=ArtifactId(final)),
            ts_millis=now_millis(),
        ),
    ]


def aborted_error(history: RunHistory) -> ErrorInfo | None:
    """The error of a run ended by `abort_drafts`, else None."""
    for env in reversed(history.envelopes):
        ev = env.event
        if isinstance(ev, DomainEvent) and ev.name == RUN_ABORTED_EVENT and env.state_id is None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                return ErrorInfo.model_validate(ev.payload["error"])
    return None


@dataclass
class LoadedRun:
    history: RunHistory
    manifest: RunManifest
    plan: ExecutionPlan


def load_run(
    events: EventStore,
    artifacts: ArtifactStore,
    registry: OperationRegistry,
    run_id: RunId,
    *,
    history: RunHistory | None = None,
) -> LoadedRun:
    """Read, decode and check a whole run (docs/execution.md#resume) without appending anything.
    (`history`: the run's history, already read and checked by the caller.)"""
    if history is None:
        history = RunHistory.load(events, run_id)
    manifest, plan = derive_plan(artifacts, registry, str(history.started.manifest_id))
    if str(plan.op_id) != str(history.started.op_id):
        raise RunError("plan_op_id_mismatch", "the re-derived plan is for another op")
    check_states_in_plan(history.states, plan.compiled.position)
    SnapshotStore(artifacts).load(str(history.started.initial_snapshot_id))
    return LoadedRun(history, manifest, plan)


def derive_plan(
    artifacts: ArtifactStore, registry: OperationRegistry, manifest_id: str
) -> tuple[RunManifest, ExecutionPlan]:
    """The stored manifest (checked against its id) and the plan this code derives from it:
    `manifest_invalid`, `manifest_id_mismatch`, `plan_op_id_mismatch` (docs/execution.md)."""
    try:
        manifest = RunManifest.model_validate(get_json(artifacts, manifest_id, "manifest"))
    except MfmError:
        raise
    except ValueError as exc:
        raise Corruption("manifest_invalid", f"stored manifest does not decode: {exc}") from None
    if manifest.manifest_id() != manifest_id:
        raise Corruption("manifest_id_mismatch", "stored manifest does not hash to its id")
    plan = registry.plan_from_input_params(manifest.input_params, manifest.run_config)
    if str(manifest.op_id) != str(plan.op_id):
        raise RunError("plan_op_id_mismatch", "the re-derived plan is for another op")
    return manifest, plan


def check_states_in_plan(state_ids: Iterable[str | None], position: Container[str]) -> None:
    """A history that names a state the re-derived plan does not have was written by other
    code: `recovery_state_not_in_plan` (docs/execution.md#resume). Both engines check every
    state id they read (the coordinator as its log grows)."""
    for state_id in state_ids:
        if state_id is not None and str(state_id) not in position:
            raise RunError(
                "recovery_state_not_in_plan",
                f"history names state {state_id}, which the plan does not have",
                details={"state_id": str(state_id)},
            )


def explained(result: RunResult, progress: RunProgress) -> RunResult:
    """A finished run's result with its failure explained exactly as when it ended: the
    failed state first in canonical order, else the earliest merge conflict, which
    `progress` recomputes from the recorded deltas — the history alone cannot say when the
    `Minimal` profile kept no `context_merge_conflict` event. Other results (and a failure
    `progress` cannot explain, such as an aborted run's) are returned as they are."""
    if result.phase != RunPhase.FAILED:
        return result
    failed, error = progress.failure()
    if error is None:
        return result
    return result.model_copy(
        update={
            "failed_state": progress.state_id(failed) if failed is not None else None,
            "error": error,
        }
    )


def explained_from_history(
    result: RunResult,
    history: RunHistory,
    plan: ExecutionPlan,
    run_config: RunConfig,
    snapshots: SnapshotStore,
) -> RunResult:
    """`explained`, for a reader that has only the history and the stores (`mfm status`,
    `mfm wait`, the dashboard): the recorded deltas are read only for a failed run whose
    history names no reason (a merge conflict under the `Minimal` profile)."""
    if result.phase != RunPhase.FAILED or result.error is not None:
        return result
    return explained(
        result, RunProgress.from_history(history, plan.compiled, run_config, snapshots)
    )


def result_from_history(
    history: RunHistory, position: Mapping[str, int] | None = None
) -> RunResult:
    """The result of a finished run, read back from its events.

    With the plan's canonical `position`s, a failed run names the same failed state the
    engines report (the first in canonical order); without, the first to have failed."""
    completed = history.completed
    if completed is None:
        return RunResult(run_id=history.run_id, phase=RunPhase.RUNNING)
    if completed.status == RunStatus.COMPLETED:
        return RunResult(
            run_id=history.run_id,
            phase=RunPhase.COMPLETED,
            final_snapshot_id=completed.final_snapshot_id,
        )
    if completed.status == RunStatus.CANCELLED:
        request = history.cancel or CancelRequest(reason="(no cancel request recorded)")
        return RunResult(
            run_id=history.run_id,
            phase=RunPhase.CANCELLED,
            final_snapshot_id=completed.final_snapshot_id,
            error=cancelled_error(request),
        )
    aborted = aborted_error(history)
    if aborted is not None:
        return RunResult(
            run_id=history.run_id,
            phase=RunPhase.FAILED,
            final_snapshot_id=completed.final_snapshot_id,
            error=aborted,
        )
    for env in reversed(history.envelopes):
        ev = env.event
        if isinstance(ev, DomainEvent) and ev.name == CONFLICT_EVENT and env.state_id is None:
            conflict = MergeConflict.from_payload(ev.payload)
            if conflict is not None:
                return RunResult(
                    run_id=history.run_id,
                    phase=RunPhase.FAILED,
                    final_snapshot_id=completed.final_snapshot_id,
                    error=conflict.error(),
                )
    failed = [
        (
            position.get(sid, 1 << 62) if position is not None else rec.last.entered_seq,
            sid,
            rec.last.error,
        )
        for sid, rec in history.states.items()
        if rec.last is not None and rec.last.outcome == "failed"
    ]
    failed.sort(key=lambda row: (row[0], row[1]))
    state, error = (failed[0][1], failed[0][2]) if failed else (None, None)
    return RunResult(
        run_id=history.run_id,
        phase=RunPhase.FAILED,
        final_snapshot_id=completed.final_snapshot_id,
        failed_state=state,
        error=error,
    )
