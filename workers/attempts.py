"""`execute_attempt`: run exactly one state attempt on a worker (docs/cluster.md).

Order matters for at-least-once delivery: the lease is taken *before* `StateEntered`
is appended, so a second delivery of the same task finds the lease held and returns
without touching the log; the envelope guards reject any late `StateEntered` (the
attempt is no longer the next one), which we report as a duplicate — never a second
attempt. Results are small typed outcomes (`workers.outcomes.AttemptOutcome`; a short string
on the wire); snapshots stay in the artifact store.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import redis

from mfm_dist.engine.attempt import AttemptEnv, now_millis, run_attempt
from mfm_dist.engine.deadlines import StopSignal
from mfm_dist.errors import ErrorCategory, ErrorInfo, MfmError
from mfm_dist.events import EventDraft, EventEnvelope, StateEntered, StateFailed
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.stores.guards import GuardViolation
from workers.faults import LEASE_LOST, is_permanent_storage_fault
from workers.leases import lease_lost_error
from workers.outcomes import AttemptOutcome
from workers.runtime import Runtime, retire_if_stuck

log = logging.getLogger("mfm.worker")

PLAN_MISMATCH = "plan_mismatch"


def plan_mismatch_error() -> ErrorInfo:
    return ErrorInfo(
        code=PLAN_MISMATCH,
        category=ErrorCategory.UNKNOWN,
        retryable=False,
        message="this worker's code expands a different plan than the run recorded",
    )


class _TrackedAppend:
    """`append_next` for one attempt that remembers whether `StateEntered` landed."""

    def __init__(self, rt: Runtime, run_id: RunId) -> None:
        self._rt = rt
        self._run_id = run_id
        self.entered = False

    def __call__(self, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
        with self._rt.timings.phase("append"):
            out = self._rt.events.append_next(self._run_id, drafts)
        self.entered = True
        return out


def execute_attempt(
    rt: Runtime,
    *,
    run_id: str,
    manifest_id: str,
    state_id: str,
    attempt: int,
    base_snapshot_id: str,
    plan_fingerprint: str,
    sent_ms: int = 0,
) -> AttemptOutcome:
    """Run one attempt; returns how it ended: completed, failed (code), skipped, duplicate,
    superseded, cancelled, plan_mismatch or error (code). Never raises for expected races."""
    if sent_ms:
        rt.timings.add("broker", max(0, now_millis() - sent_ms) / 1000.0)
    rid, sid = RunId(run_id), StateId(state_id)
    ttl_ms = rt.settings.lease_ttl_ms
    try:
        ctx = rt.run_context(manifest_id)
    except MfmError as exc:
        log.error("run %s: cannot load the run context (%s)", run_id, exc.info.code)
        if is_permanent_storage_fault(exc):
            return _refuse_with_lease(rt, rid, sid, attempt, base_snapshot_id, exc, ttl_ms)
        return AttemptOutcome.error(exc.info.code)
    if ctx.fingerprint != plan_fingerprint:
        return _refuse_plan_mismatch(rt, rid, sid, attempt, base_snapshot_id)
    with rt.timings.phase("lease"):
        lease = rt.coord.acquire_lease(run_id, state_id, attempt, ttl_ms)
    if lease is None:
        return AttemptOutcome.DUPLICATE
    # Losing the lease (e.g. the run was cancelled: the coordinator took it away) stops the
    # attempt at once, even while its handler is busy in code that never checks its IO.
    stop = StopSignal()
    rt.keeper.hold(run_id, state_id, lease, lambda: stop.stop(lease_lost_error(state_id)))
    append = _TrackedAppend(rt, rid)
    release = True
    try:
        snapshots = rt.snapshots
        base = snapshots.load(base_snapshot_id)
        env = AttemptEnv(
            run_id=rid,
            run_config=ctx.manifest.run_config,
            artifacts=rt.artifacts,
            snapshots=snapshots,
            facts=rt.facts(run_id),
            io_factory=rt.io_factory,
            append=append,
            fence=lambda: rt.keeper.fence(run_id, state_id, lease),
            max_state_timeout_ms=rt.settings.max_state_timeout_ms,
            stop=stop,
        )
        state = ctx.plan.compiled.states[ctx.plan.compiled.position[state_id]]
        with rt.timings.phase("attempt_total"):
            outcome = run_attempt(env, sid, state, attempt, base_snapshot_id, base)
    except GuardViolation as exc:
        if not append.entered:
            # Someone else entered this attempt (we may have taken over a dead holder's
            # lease): let the coordinator look now rather than at its next timer.
            _quietly(lambda: rt.coord.schedule_by(run_id, now_millis()))
            return AttemptOutcome.DUPLICATE
        log.warning(
            "run %s: %s attempt %d closed by someone else (%s)", run_id, sid, attempt, exc.rule
        )
        return AttemptOutcome.SUPERSEDED
    except Exception as exc:
        code = exc.info.code if isinstance(exc, MfmError) else type(exc).__name__
        if code == LEASE_LOST:
            # Someone else owns the attempt now (or the run was cancelled and its lease
            # taken away); it is not ours to release or record.
            log.warning("run %s: %s attempt %d lost its lease; stopped", run_id, sid, attempt)
            for thread in stop.abandoned:
                retire_if_stuck(thread)
            return AttemptOutcome.SUPERSEDED
        if is_permanent_storage_fault(exc):
            if not append.entered:
                # E.g. the base snapshot is missing or corrupt: record why, end the state.
                return _record_failure(rt, rid, sid, attempt, base_snapshot_id, exc)
            # Inside the attempt: give the lease back at once, so the coordinator closes
            # the orphan now; the orphan cap (MAX_ORPHAN_RECOVERIES) then ends the run.
            log.error("run %s: %s attempt %d hit permanent %s", run_id, sid, attempt, code)
            return AttemptOutcome.error(code)
        # Transient infrastructure fault. Keep the lease until it expires: the coordinator
        # then closes the attempt as an orphan (or re-dispatches it: its reservation is
        # valid only while the lease lives) after one lease TTL — a natural back-off while a
        # store is down.
        release = False
        log.warning("run %s: %s attempt %d hit %s", run_id, sid, attempt, code)
        return AttemptOutcome.error(code)
    finally:
        intact = rt.keeper.drop(run_id, state_id, lease)
        if release and intact:
            with rt.timings.phase("lease"):
                _quietly(lambda: rt.coord.release_lease(run_id, state_id, lease))
        rt.flush_timings()
    if outcome.abandoned is not None:
        retire_if_stuck(outcome.abandoned.thread)
    if not outcome.entered:
        log.info("run %s: %s attempt %d dropped: the run was cancelled", run_id, sid, attempt)
        return AttemptOutcome.CANCELLED
    if outcome.skipped:
        return AttemptOutcome.SKIPPED
    if outcome.completed:
        return AttemptOutcome.COMPLETED
    return AttemptOutcome.failed(outcome.error.code if outcome.error else "unknown")


def permanent_fault_error(exc: BaseException) -> ErrorInfo:
    """The recorded error of a permanent storage fault: its code, never retryable."""
    code = exc.info.code if isinstance(exc, MfmError) else type(exc).__name__
    return ErrorInfo(
        code=code,
        category=ErrorCategory.STORAGE,
        retryable=False,
        message=f"the attempt could not start: permanent storage fault ({code})",
    )


def _record_failure(
    rt: Runtime, rid: RunId, sid: StateId, attempt: int, base_snapshot_id: str, exc: Exception
) -> AttemptOutcome:
    error = permanent_fault_error(exc)
    try:
        _append_refusal(rt, rid, sid, attempt, base_snapshot_id, error)
    except GuardViolation:
        return AttemptOutcome.DUPLICATE
    except (MfmError, redis.RedisError) as err:
        code = err.info.code if isinstance(err, MfmError) else type(err).__name__
        log.error("run %s: could not record %s's failure (%s)", rid, sid, code)
        return AttemptOutcome.error(code)
    log.error("run %s: %s attempt %d failed for good: %s", rid, sid, attempt, error.code)
    return AttemptOutcome.failed(error.code)


def _refuse_with_lease(
    rt: Runtime,
    rid: RunId,
    sid: StateId,
    attempt: int,
    base_snapshot_id: str,
    exc: Exception,
    ttl_ms: int,
) -> AttemptOutcome:
    """A permanent fault before anything started (the manifest is unreadable): take the
    lease so a concurrent delivery stays out, record the failure, give the lease back."""
    lease = rt.coord.acquire_lease(str(rid), str(sid), attempt, ttl_ms)
    if lease is None:
        return AttemptOutcome.DUPLICATE
    try:
        return _record_failure(rt, rid, sid, attempt, base_snapshot_id, exc)
    finally:
        _quietly(lambda: rt.coord.release_lease(str(rid), str(sid), lease))


def _append_refusal(
    rt: Runtime, rid: RunId, sid: StateId, attempt: int, base_snapshot_id: str, error: ErrorInfo
) -> None:
    """`StateEntered` + `StateFailed` in one batch: the history says why the state ended."""
    ts = now_millis()
    drafts = [
        EventDraft(
            event=StateEntered(
                state_id=sid, attempt=attempt, base_snapshot_id=ArtifactId(base_snapshot_id)
            ),
            ts_millis=ts,
            state_id=sid,
            attempt=attempt,
        ),
        EventDraft(
            event=StateFailed(state_id=sid, error=error, failure_snapshot_id=None),
            ts_millis=ts,
            state_id=sid,
            attempt=attempt,
        ),
    ]
    rt.events.append_next(rid, drafts)


def _refuse_plan_mismatch(
    rt: Runtime, rid: RunId, sid: StateId, attempt: int, base_snapshot_id: str
) -> AttemptOutcome:
    try:
        _append_refusal(rt, rid, sid, attempt, base_snapshot_id, plan_mismatch_error())
    except GuardViolation:
        return AttemptOutcome.DUPLICATE
    log.error("run %s: refused %s attempt %d: plan_mismatch", rid, sid, attempt)
    return AttemptOutcome.PLAN_MISMATCH


def _quietly(fn: Callable[[], object]) -> None:
    with contextlib.suppress(redis.RedisError, MfmError):
        fn()
