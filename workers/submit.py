"""Submit a run to the cluster and wait for its result — from any process that has the
stores and the broker configured (`MFM_EVENTS_URL`, `MFM_ARTIFACTS_URL`, `MFM_BROKER_URL`).

`submit_run` does everything `LocalEngine.start` does before executing (CONTRACT §7.1),
records the plan fingerprint for workers to check, and wakes the coordinator.
"""

from __future__ import annotations

import logging
import time

from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    result_from_history,
    store_manifest,
    validate_start,
)
from mfm_dist.errors import ConcurrencyError, MfmError, RunError
from mfm_dist.ids import RunId
from mfm_dist.run import RunPhase, RunResult
from mfm_dist.stores.guards import GuardViolation
from workers.runtime import Runtime, get_runtime

log = logging.getLogger("mfm.submit")


class RunWaitTimeout(RunError):
    def __init__(self, run_id: str, timeout_s: float) -> None:
        super().__init__(
            "run_wait_timeout", f"run {run_id} did not finish within {timeout_s:g}s", retryable=True
        )


def submit_run(
    target: str,
    run_input: JsonValue,
    run_config: RunConfig,
    *,
    version: str | None = None,
    runtime: Runtime | None = None,
    run_id: str | None = None,
    submission_id: str | None = None,
) -> RunId:
    """Validate and record the start of a run, then hand it to the coordinator.

    `run_id`: the id to use (minted when None). `submission_id` (e.g. the Celery task
    id of `mfm.submit`) makes the call idempotent: a repeated call with the same id
    continues or just returns the run the first call started, never a second run."""
    rt = runtime or get_runtime()
    rid = RunId(run_id) if run_id is not None else RunId.mint()
    if submission_id is not None:
        rid = RunId(
            rt.coord.claim_submission(submission_id, str(rid), rt.settings.submit_dedup_ttl_s)
        )
        if _started(rt, rid):
            # An earlier delivery got at least as far as `RunStarted`; make sure the
            # coordinator is awake (it may have died before sending the wake-up).
            wake(rt, str(rid))
            return rid
    prepared = prepare_run(rt.registry, target, run_input, run_config, version=version)
    manifest_id = store_manifest(rt.artifacts, prepared.manifest)
    initial = validate_start(
        rt.artifacts,
        plan=prepared.plan,
        run_config=prepared.run_config,
        manifest=prepared.manifest,
        manifest_id=manifest_id,
        initial_context=prepared.initial_context,
    )
    rt.coord.record_plan(str(rid), prepared.plan.fingerprint())
    # The run's timer exists before the run does: whoever dies after `RunStarted`, a control
    # worker's poller finds the run within one watchdog period (docs: distributed liveness).
    rt.coord.schedule(str(rid), now_millis() + int(rt.settings.watchdog_s * 1000))
    try:
        record_run_start(
            rt.events,
            rt.artifacts,
            plan=prepared.plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
            run_id=rid,
        )
    except (GuardViolation, ConcurrencyError):
        if submission_id is None or not _started(rt, rid):
            raise
        # A concurrent delivery of the same submission appended `RunStarted` first.
    wake(rt, str(rid))
    return rid


def wake(rt: Runtime, run_id: str) -> bool:
    """Send the run's coordinator one `advance` now (True). If the broker cannot take it,
    make the run's timer due now instead, so a control worker's poller sends it (False)."""
    from workers.tasks import send_advance

    try:
        send_advance(run_id)
        return True
    except Exception as exc:
        log.warning(
            "run %s: broker unavailable (%s); its timer wakes it", run_id, type(exc).__name__
        )
        rt.coord.schedule_by(run_id, now_millis())
        return False


def _started(rt: Runtime, rid: RunId) -> bool:
    return rt.events.head_seq(rid) > 0


def wait_for_run(
    run_id: str, timeout_s: float, *, poll_s: float = 0.1, runtime: Runtime | None = None
) -> RunResult:
    """Poll the event log until the run has `RunCompleted`; its result.

    Transient store faults (Redis restarting, a dropped connection) are ridden out until
    the deadline: the run goes on without us, so a blip must not fail the wait."""
    from workers.faults import is_transient

    rt = runtime or get_runtime()
    rid = RunId(run_id)
    deadline = time.monotonic() + timeout_s
    history: RunHistory | None = None
    while True:
        try:
            if history is None:
                history = RunHistory.load(rt.events, rid)
            else:
                history.refresh(rt.events)
        except MfmError as exc:
            if exc.info.code != "run_not_found" and not is_transient(exc):
                raise
        except Exception as exc:
            if not is_transient(exc):
                raise
        if history is not None and history.completed is not None:
            result = result_from_history(history)
            if result.phase != RunPhase.RUNNING:
                return result
        if time.monotonic() >= deadline:
            raise RunWaitTimeout(str(rid), timeout_s)
        time.sleep(poll_s)
