"""`advance(run_id)`: look at a run's log and do what comes next (CONTRACT §7.4, §11).

One coordinator at a time per run (a Redis lock); a busy lock re-enqueues the
wake-up instead of dropping it. The coordinator keeps each run's decoded history
and progress in process memory and applies only what was appended since its last
look. `decide()` (pure, in the core) says what to do: close orphans, dispatch
attempts as one chord whose join is another `advance`, or finish the run. The
event log, not chord counters, decides what is complete, so a join that fires
twice or early only costs a read.

Celery is injected (`Dispatcher`), so this module has no Celery import.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, cast

import redis

from mfm_dist.canonical import JsonValue
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.coordination import Decision, Dispatch, Finish, decide
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import CONFLICT_EVENT
from mfm_dist.engine.progress import ORPHAN_CODE, RunProgress
from mfm_dist.errors import ErrorCategory, ErrorInfo, MfmError, RunError
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    StateCompleted,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.stores.guards import GuardViolation
from workers.faults import is_transient
from workers.leases import Coordination
from workers.runtime import RunContext, Runtime

log = logging.getLogger("mfm.coordinator")

BUSY_RETRY_S = 0.1
MAX_ROUNDS = 64
RUN_CACHE_SIZE = 256
PREFETCH_THREADS = 8


@dataclass(frozen=True)
class AttemptTask:
    """The ids an attempt task carries — never snapshots or payloads."""

    run_id: str
    manifest_id: str
    state_id: str
    attempt: int
    base_snapshot_id: str
    plan_fingerprint: str
    countdown_s: float
    sent_ms: int


class Dispatcher(Protocol):
    def send_chord(self, run_id: str, attempts: list[AttemptTask]) -> None:
        """Header: the attempts on the attempt queue; body: `advance(run_id)`."""

    def send_advance(self, run_id: str, countdown_s: float, *, watchdog: str | None = None) -> None:
        """One `advance(run_id)` on the control queue; `watchdog` is the liveness token."""


class LockLost(Exception):
    """The coordinator lock expired under a long advance; someone else may coordinate."""


def orphan_error() -> ErrorInfo:
    return ErrorInfo(
        code=ORPHAN_CODE,
        category=ErrorCategory.UNKNOWN,
        retryable=True,
        message="attempt was open but its worker lease had expired; closed and retried",
    )


@dataclass
class CachedRun:
    ctx: RunContext
    history: RunHistory
    progress: RunProgress


class Coordinator:
    def __init__(self, runtime: Runtime, dispatcher: Dispatcher) -> None:
        self.rt = runtime
        self.dispatcher = dispatcher
        self._runs: OrderedDict[str, CachedRun] = OrderedDict()
        self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="mfm-prefetch")

    def close(self) -> None:
        """Stop the prefetch threads (a replaced coordinator must not leak them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._runs.clear()

    # -- entry point ----------------------------------------------------------------------------
    def advance(self, run_id: str, *, watchdog: str | None = None) -> str:
        """Returns a short status: busy, finished, dispatched:N, waiting, idle, lock_lost,
        watchdog_superseded or finish_rejected:<rule>.

        `watchdog` is the token of a liveness wake-up: only the message whose token is
        the run's current one re-arms the watchdog; any other watchdog message exits."""
        rid = str(RunId(run_id))
        coord = self.rt.coord
        if watchdog:
            current = coord.watchdog_token(rid)
            if current is not None and current != watchdog:
                return "watchdog_superseded"
        ttl_ms = int(self.rt.settings.lock_ttl_s * 1000)
        token = coord.try_lock(rid, ttl_ms)
        if token is None:
            # Hand the watchdog token on, so the chain survives a busy lock.
            self.dispatcher.send_advance(rid, BUSY_RETRY_S, watchdog=watchdog)
            return "busy"
        status = "error"
        rearm = True
        try:
            with self.rt.timings.phase("coord_advance"):
                status = self._advance_locked(rid, _Lock(coord, rid, token, ttl_ms))
            rearm = status != "finished"
            return status
        except LockLost:
            log.warning("run %s: coordinator lock lost during a long advance", rid)
            status = "lock_lost"
            return status
        except BaseException as exc:
            # A transient fault (Redis OOM, S3 down) must not end the liveness chain;
            # a permanent one (plan mismatch, corrupt history) must not loop forever.
            rearm = not isinstance(exc, MfmError) or is_transient(exc)
            raise
        finally:
            if rearm:
                self._ensure_watchdog(rid, watchdog)
            with contextlib.suppress(redis.RedisError):
                coord.unlock(rid, token)
            self.rt.flush_timings()

    # -- the run cache --------------------------------------------------------------------------
    def _load(self, rid: str) -> CachedRun:
        cached = self._runs.get(rid)
        if cached is not None:
            self._runs.move_to_end(rid)
            try:
                new = self._refresh(cached.history)
                if new is not None:
                    if new:
                        self._prefetch(cached.history, new)
                        cached.progress.observe(cached.history, new)
                    return cached
                log.warning("run %s: the log no longer continues the cached history", rid)
            except MfmError as exc:
                log.warning("run %s: rebuilding cached state (%s)", rid, exc.info.code)
            self._runs.pop(rid, None)
        history = RunHistory.load(self.rt.events, RunId(rid))
        ctx = self.rt.run_context(str(history.started.manifest_id))
        for state_id in history.states:
            if state_id not in ctx.plan.compiled.position:
                raise RunError(
                    "recovery_state_not_in_plan",
                    f"history names state {state_id}, which the plan does not have",
                    details={"state_id": state_id},
                )
        self._prefetch(history, history.envelopes)
        progress = RunProgress.from_history(
            history, ctx.plan.compiled, ctx.manifest.run_config, self.rt.snapshots
        )
        run = CachedRun(ctx, history, progress)
        self._runs[rid] = run
        while len(self._runs) > RUN_CACHE_SIZE:
            self._runs.popitem(last=False)
        return run

    def _refresh(self, history: RunHistory) -> list[EventEnvelope] | None:
        """Apply what was appended since the cached head; None if the log does not continue
        the cache any more (Redis lost a tail of the log and maybe took new appends since):
        then the cache is ahead of the truth and must be rebuilt from the log.

        Re-reads the last cached envelope along with the new ones (one round trip)."""
        head = history.head
        envelopes = self.rt.events.read_range(history.run_id, head, None)
        if not envelopes or envelopes[0] != history.envelopes[-1]:
            return None
        new = envelopes[1:]
        if new:
            history.extend(new)
        return new

    def _prefetch(self, history: RunHistory, envelopes: list[EventEnvelope]) -> None:
        """Load the snapshots `observe` will diff, in parallel (they are immutable)."""
        wanted: set[str] = set()
        for env in envelopes:
            ev = env.event
            if isinstance(ev, StateCompleted):
                wanted.add(str(ev.context_snapshot_id))
                record = history.states.get(str(ev.state_id))
                if record is not None and record.last is not None:
                    wanted.add(record.last.base_snapshot_id)
        if len(wanted) > 1:
            with self.rt.timings.phase("coord_prefetch"):
                list(self._pool.map(self.rt.snapshots.load, sorted(wanted)))

    # -- one advance ----------------------------------------------------------------------------
    def _advance_locked(self, rid: str, lock: _Lock) -> str:
        run = self._load(rid)
        lock.renew()
        coord = self.rt.coord
        if run.history.completed is not None:
            self._forget(rid)
            return "finished"
        recorded = coord.record_plan_if_missing(rid, run.ctx.fingerprint)
        if recorded != run.ctx.fingerprint:
            raise RunError(
                "plan_mismatch",
                f"run {rid}: this coordinator's code expands a different plan than the run "
                "recorded; deploy the code the run was submitted with",
                details={"recorded": recorded, "local": run.ctx.fingerprint},
            )
        for _ in range(MAX_ROUNDS):
            decision = self._decide(rid, run)
            lock.renew()
            if decision.close_orphans:
                self._close_orphans(rid, decision.close_orphans)
                run = self._load(rid)
                lock.renew()
                continue
            if decision.finish is not None:
                return self._finish(rid, run, decision.finish)
            if decision.dispatch:
                self._dispatch(rid, run, decision.dispatch)
                return f"dispatched:{len(decision.dispatch)}"
            return "waiting" if decision.in_flight else "idle"
        return "waiting"

    def _decide(self, rid: str, run: CachedRun) -> Decision:
        now = now_millis()
        open_ids = [s for s, _ in run.history.open_attempts()]
        leases = self.rt.coord.live_leases(rid, open_ids)
        reserved = self.rt.coord.reservations(rid, now)
        stale = [
            s
            for s, a in reserved.items()
            if s in run.progress.plan.position
            and a < run.progress.next_attempt[run.progress.plan.position[s]]
        ]
        self.rt.coord.clear_reservations(rid, stale)
        with self.rt.timings.phase("coord_decide"):
            return decide(
                run.history,
                run.progress,
                lease_alive=lambda s, a: leases.get(s) == a,
                reserved=reserved,
                now_ms=now,
            )

    def _close_orphans(self, rid: str, orphans: list[tuple[str, int]]) -> None:
        for state_id, attempt in orphans:
            draft = EventDraft(
                event=StateFailed(
                    state_id=StateId(state_id), error=orphan_error(), failure_snapshot_id=None
                ),
                ts_millis=now_millis(),
                state_id=StateId(state_id),
                attempt=attempt,
            )
            try:
                self.rt.events.append_next(RunId(rid), [draft])
                log.info("run %s: closed orphan %s attempt %d", rid, state_id, attempt)
            except GuardViolation:
                pass  # the attempt was closed meanwhile (by its worker or another coordinator)

    def _dispatch(self, rid: str, run: CachedRun, dispatch: list[Dispatch]) -> None:
        """Reserve, then send (the lock was checked just before)."""
        now = now_millis()
        timeout_ms = int(self.rt.settings.dispatch_timeout_s * 1000)
        self.rt.coord.reserve(
            rid,
            {
                d.state_id: (d.attempt, now + int(d.countdown_s * 1000) + timeout_ms)
                for d in dispatch
            },
        )
        tasks = [
            AttemptTask(
                run_id=rid,
                manifest_id=str(run.history.started.manifest_id),
                state_id=d.state_id,
                attempt=d.attempt,
                base_snapshot_id=d.base_snapshot_id,
                plan_fingerprint=run.ctx.fingerprint,
                countdown_s=d.countdown_s,
                sent_ms=now,
            )
            for d in dispatch
        ]
        with self.rt.timings.phase("coord_send"):
            self.dispatcher.send_chord(rid, tasks)

    def _finish(self, rid: str, run: CachedRun, finish: Finish) -> str:
        drafts: list[EventDraft] = []
        config = run.ctx.manifest.run_config
        if finish.conflict_payload is not None and config.keeps_domain_event(CONFLICT_EVENT):
            payload = cast(JsonValue, finish.conflict_payload)
            drafts.append(
                EventDraft(
                    event=DomainEvent(name=CONFLICT_EVENT, payload=payload),
                    ts_millis=now_millis(),
                )
            )
        drafts.append(
            EventDraft(
                event=RunCompleted(
                    status=finish.status, final_snapshot_id=ArtifactId(finish.final_snapshot_id)
                ),
                ts_millis=now_millis(),
            )
        )
        try:
            self.rt.events.append_next(RunId(rid), drafts)
        except GuardViolation as exc:
            if exc.rule != "after_run_completed":
                # Not finished: something changed under us (e.g. an attempt opened). Keep
                # the run's cache honest and the watchdog armed; the next advance decides.
                log.warning("run %s: RunCompleted rejected (%s); will look again", rid, exc.rule)
                self._runs.pop(rid, None)
                return f"finish_rejected:{exc.rule}"
            log.info("run %s: already completed by another coordinator", rid)
        self._forget(rid)
        return "finished"

    def _forget(self, rid: str) -> None:
        self._runs.pop(rid, None)
        self.rt.coord.forget_run(rid)

    def _ensure_watchdog(self, rid: str, holder: str | None) -> None:
        """Keep one liveness `advance` scheduled while the run is unfinished, so a lost
        join, a dead worker or an infrastructure outage never needs a user to step in.
        Only the current watchdog message (`holder`) or a run without one re-arms."""
        delay = self.rt.settings.watchdog_s
        try:
            token = self.rt.coord.claim_watchdog(rid, int(delay * 2000), holder)
            if token is not None:
                self.dispatcher.send_advance(rid, delay, watchdog=token)
        except Exception as exc:  # best effort: the failing advance is retried by Celery
            log.warning("run %s: could not arm the watchdog (%s)", rid, type(exc).__name__)


class _Lock:
    """The held coordinator lock of one advance; `renew()` before each store-heavy step."""

    def __init__(self, coord: Coordination, rid: str, token: str, ttl_ms: int) -> None:
        self._coord, self._rid, self._token, self._ttl_ms = coord, rid, token, ttl_ms

    def renew(self) -> None:
        if not self._coord.renew_lock(self._rid, self._token, self._ttl_ms):
            raise LockLost(self._rid)
