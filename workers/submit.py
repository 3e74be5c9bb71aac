"""Submit a run to the cluster and wait for its result — from any process that has the
stores and the broker configured (`MFM_EVENTS_URL`, `MFM_ARTIFACTS_URL`, `MFM_BROKER_URL`).

`submit_run` does everything `LocalEngine.start` does before executing (CONTRACT §7.1),
records the plan fingerprint for workers to check, and wakes the coordinator.
"""

from __future__ import annotations

import time

from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    result_from_history,
    store_manifest,
    validate_start,
)
from mfm_dist.errors import MfmError, RunError
from mfm_dist.ids import RunId
from mfm_dist.run import RunPhase, RunResult
from workers.runtime import Runtime, get_runtime


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
) -> RunId:
    """Validate and record the start of a run, then hand it to the coordinator."""
    from workers.tasks import advance

    rt = runtime or get_runtime()
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
    run_id, _ = record_run_start(
        rt.events,
        rt.artifacts,
        plan=prepared.plan,
        manifest_id=manifest_id,
        initial_snapshot=initial,
    )
    rt.coord.record_plan(str(run_id), prepared.plan.fingerprint())
    advance.apply_async(args=(str(run_id),), queue=rt.settings.control_queue)
    return run_id


def wait_for_run(
    run_id: str, timeout_s: float, *, poll_s: float = 0.1, runtime: Runtime | None = None
) -> RunResult:
    """Poll the event log until the run has `RunCompleted`; its result."""
    rt = runtime or get_runtime()
    rid = RunId(run_id)
    deadline = time.monotonic() + timeout_s
    history: RunHistory | None = None
    while True:
        if history is None:
            try:
                history = RunHistory.load(rt.events, rid)
            except MfmError as exc:
                if exc.info.code != "run_not_found":
                    raise
        else:
            history.refresh(rt.events)
        if history is not None and history.completed is not None:
            result = result_from_history(history)
            if result.phase != RunPhase.RUNNING:
                return result
        if time.monotonic() >= deadline:
            raise RunWaitTimeout(str(rid), timeout_s)
        time.sleep(poll_s)
