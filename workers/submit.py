"""Accept submissions on the cluster and wait for results — from any process that holds the
cluster's settings (a `Runtime` built from `ClusterSettings`; without one, the process's
runtime: see `workers.runtime.process_settings`).

`accept` does everything `LocalEngine.start` does before executing, records the plan
fingerprint for workers to check, arms the run's timer and wakes the coordinator; the
submission contract (ids, idempotency, the reply) is `mfm_dist.submission`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mfm_dist import metrics
from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    stored_and_validated,
    submitted_as,
)
from mfm_dist.errors import ConcurrencyError
from mfm_dist.ids import RunId
from mfm_dist.manifest import BuildInfo
from mfm_dist.results import RunResult
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.submission import (
    OnComplete,
    Outcome,
    SubmissionRecord,
    SubmissionRejected,
    SubmitReply,
    SubmitRequest,
    fingerprint,
    parse_request,
    rejection_info,
    run_id_for_delivery,
    run_id_for_key,
)
from mfm_dist.waiting import wait_for_result
from workers import submission_log
from workers.runtime import Runtime, get_runtime

log = logging.getLogger("mfm.submit")


def submit_run(
    target: str,
    run_input: JsonValue,
    run_config: RunConfig,
    *,
    version: str | None = None,
    runtime: Runtime | None = None,
    run_id: str | None = None,
    submission_id: str | None = None,
    idempotency_key: str | None = None,
    labels: dict[str, str] | None = None,
    on_complete: OnComplete | None = None,
) -> RunId:
    """Validate and record the start of a run, then hand it to the coordinator (the Python
    form of a `mfm.submit` message). Raises the rejection instead of returning it.

    `submission_id` (e.g. a Celery task id) or `idempotency_key` make the call idempotent:
    a repeated call continues or just returns the run the first one started. `runtime`:
    the cluster to submit to; a public entry point, it defaults to this process's runtime
    (`workers.runtime.get_runtime`: the bound settings, else the environment's)."""
    request = SubmitRequest(
        op=target,
        version=version,
        input=run_input,
        config=run_config,
        idempotency_key=idempotency_key,
        labels=labels or {},
        on_complete=on_complete,
    )
    return RunId(
        accept(runtime or get_runtime(), request, delivery_id=submission_id, run_id=run_id).run_id
    )


@dataclass(frozen=True)
class Accepted:
    run_id: str
    outcome: Outcome


def accept(
    rt: Runtime,
    request: SubmitRequest,
    *,
    delivery_id: str | None = None,
    run_id: str | None = None,
    coordinate: Callable[[str], object] | None = None,
    build: BuildInfo | None = None,
) -> Accepted:
    """Start the run a submission names, or find the one it already started (docs:
    submission). Everything `LocalEngine.start` checks is checked before anything is
    written; the run's timer exists before `RunStarted`, so a crash at any point leaves
    either nothing or a run the cluster finishes — never an orphan nobody can see.

    `build`: the manifest's build provenance when the caller already knows it (a backfill
    starting many runs); by default it is computed per call."""
    prepared = prepare_run(
        rt.registry, request.op, request.input, request.config, version=request.version,
        build=build,
    )
    manifest = prepared.manifest
    fp = fingerprint(str(manifest.op_id), manifest.op_version, request.input, request.config)
    if run_id is not None:
        rid = RunId(run_id)
    elif request.idempotency_key is not None:
        rid = RunId(run_id_for_key(request.op, request.idempotency_key))
    elif delivery_id is not None:
        rid = RunId(run_id_for_delivery(delivery_id))
    else:
        rid = RunId.mint()
    record = SubmissionRecord(
        fingerprint=fp,
        idempotency_key=request.idempotency_key,
        labels=request.labels,
        on_complete=request.on_complete,
        submitted_ms=now_millis(),
    )
    found = _existing(rt, rid, record)
    if found is not None:
        return found
    manifest_id, initial = stored_and_validated(rt.artifacts, prepared)
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
            submission=record,
        )
    except (GuardViolation, ConcurrencyError):
        # A concurrent delivery of the same submission appended `RunStarted` first.
        found = _existing(rt, rid, record)
        if found is None:
            raise
        return found
    metrics.run_started(str(prepared.plan.op_id))  # [metrics hook]
    if coordinate is not None:
        coordinate(str(rid))  # inline: this process takes the run's first step
    else:
        wake(rt, str(rid))
    return Accepted(str(rid), "created")


def _existing(rt: Runtime, rid: RunId, record: SubmissionRecord) -> Accepted | None:
    """The run `rid` if it was started already (refusing another request under its key)."""
    if not submitted_as(rt.events, rid, record):
        return None
    if rt.events.head_seq(rid) <= 2:
        # Nothing happened since the start: the first delivery may have died before its
        # wake-up (its timer would find the run anyway, but a wake-up now is faster).
        wake(rt, str(rid))
    return Accepted(str(rid), "existing")


LEGACY_POSITIONAL = ("op", "input", "config", "version")
"""`mfm.submit(op, input, config[, version])` — the pre-contract positional form."""
BATCH_THREADS = 8


def receive(
    rt: Runtime,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    delivery_id: str | None,
    coordinate: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """One `mfm.submit` message → its JSON reply. Never raises: a refusal is a reply with a
    stable code, logged as one WARNING line (code only) and counted (`submission_log`)."""
    reply, outcome, code = _receive_one(rt, lambda: _payload(args, kwargs), delivery_id, coordinate)
    _record(rt, [outcome] if outcome else [], [(code, delivery_id)] if code else [])
    return reply


MAX_BATCH = 1000


def receive_batch(
    rt: Runtime,
    requests: Any,
    delivery_id: str | None,
    unknown: Sequence[str] = (),
    coordinate: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """`mfm.submit_batch(requests=[…])` → `{"replies": [...]}`, one reply per request in
    order; keyless requests are idempotent per (delivery id, index)."""
    problem: SubmissionRejected | None = None
    if unknown:
        problem = SubmissionRejected(
            "submission_unknown_field", "a batch message has one field: requests"
        )
    elif not isinstance(requests, list) or not 1 <= len(requests) <= MAX_BATCH:
        problem = SubmissionRejected(
            "submission_invalid", f"requests must be a list of 1–{MAX_BATCH} submissions"
        )
    if problem is not None:
        log.warning("submission batch %s refused: %s", delivery_id or "-", problem.info.code)
        _record(rt, [], [(problem.info.code, delivery_id)])
        return SubmitReply.failed(problem.info).to_json()
    assert isinstance(requests, list)

    def one(item: tuple[int, Any]) -> tuple[dict[str, Any], str | None, str | None]:
        index, request = item
        sub_id = f"{delivery_id}/{index}" if delivery_id is not None else None
        return _receive_one(rt, lambda: request, sub_id, coordinate)

    with ThreadPoolExecutor(min(BATCH_THREADS, len(requests)), "mfm-submit") as pool:
        results = list(pool.map(one, enumerate(requests)))
    _record(
        rt,
        [o for _, o, _ in results if o],
        [(c, delivery_id) for _, _, c in results if c],
    )
    return {"replies": [r for r, _, _ in results]}


def _receive_one(
    rt: Runtime,
    payload: Callable[[], Any],
    delivery_id: str | None,
    coordinate: Callable[[str], object] | None,
) -> tuple[dict[str, Any], str | None, str | None]:
    """(reply, outcome or None, rejection code or None)."""
    try:
        request = parse_request(payload())
        accepted = accept(rt, request, delivery_id=delivery_id, coordinate=coordinate)
    except Exception as exc:
        info = rejection_info(exc)
        log.warning("submission %s refused: %s", delivery_id or "-", info.code)
        return SubmitReply.failed(info).to_json(), None, info.code
    return SubmitReply.ok(accepted.run_id, accepted.outcome).to_json(), accepted.outcome, None


def _payload(args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    if not args:
        return kwargs
    if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
        return args[0]  # the request object as the only positional argument
    if len(args) > len(LEGACY_POSITIONAL) or set(kwargs) & set(LEGACY_POSITIONAL[: len(args)]):
        raise SubmissionRejected(
            "submission_invalid", "send the submission as keyword arguments (docs: submission)"
        )
    return {**dict(zip(LEGACY_POSITIONAL, args, strict=False)), **kwargs}


def _record(rt: Runtime, outcomes: list[str], rejections: list[tuple[str, str | None]]) -> None:
    metrics.submissions(outcomes, [code for code, _ in rejections])  # [metrics hook]
    try:
        submission_log.record(rt.redis, outcomes, rejections)
    except Exception as exc:  # statistics never fail a submission
        log.debug("could not count submissions: %s", type(exc).__name__)


def wake(rt: Runtime, run_id: str) -> bool:
    """Send the run's coordinator one `advance` now (True). If the broker cannot take it,
    make the run's timer due now instead, so a control worker's poller sends it (False)."""
    try:
        rt.dispatcher.send_advance(run_id)
        return True
    except Exception as exc:
        log.warning(
            "run %s: broker unavailable (%s); its timer wakes it", run_id, type(exc).__name__
        )
        rt.coord.schedule_by(run_id, now_millis())
        return False


def wait_for_run(
    run_id: str, timeout_s: float, *, poll_s: float = 0.1, runtime: Runtime | None = None
) -> RunResult:
    """Poll the cluster's event log until the run has finished; its result (riding out
    Redis restarts and dropped connections until the deadline). `runtime` as for
    `submit_run`."""
    from workers.faults import is_transient

    rt = runtime or get_runtime()
    return wait_for_result(rt.events, run_id, timeout_s, poll_s=poll_s, transient=is_transient)
