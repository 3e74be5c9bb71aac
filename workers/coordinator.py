"""`advance(run_id)`: look at a run's log and do what comes next (docs/merge.md, docs/cluster.md).

One coordinator at a time per run (a Redis lock); an `advance` that finds the lock busy
marks the run dirty and returns, and the holder runs one more round before it lets go,
so no wake-up is lost and nobody spins. The coordinator keeps each run's history and
progress in process memory, compactly (per state: its attempts and its packed delta, not
the decoded envelopes), and applies only what was appended since its last look.

Work per step is bounded: one step dispatches at most `STEP_DISPATCH_LIMIT` attempts, in
chords sized to the measured sending rate, and sends no chord that would end past
`STEP_BUDGET_S` of sending; the rest of a wide wave goes out in the next steps,
each one `advance` sent to the back of the control queue, so other runs are coordinated in
between and no step holds a run's lock for long.
`decide()` (pure, in the core) says what to do: close orphans, dispatch attempts as one
chord whose join is another `advance`, or finish the run. The event log, not chord
counters, decides what is complete, so a join that fires twice or early only costs a read.

Liveness never depends on a message: after every look the coordinator sets the run's
wake-up time in Redis (`mfm:timers`: one watchdog period ahead, or earlier when a retry's
backoff ends or a reservation runs out), and every control worker polls the due timers.
Retries waiting out a backoff are held as *delayed* reservations and sent when due, not
as countdown messages a worker keeps in memory (and loses with its broker connection).

Celery is injected (`Dispatcher`), so this module has no Celery import.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import redis

from mfm_dist import metrics
from mfm_dist.canonical import JsonValue
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.cancellation import (
    RUN_DEADLINE_REASON,
    CancelRequest,
    cancel_drafts,
    make_request,
    run_deadline_ms,
)
from mfm_dist.engine.coordination import Decision, Dispatch, Finish, decide
from mfm_dist.engine.history import LOAD_CHUNK, RunHistory, read_chunks
from mfm_dist.engine.lifecycle import (
    CONFLICT_EVENT,
    abort_drafts,
    check_states_in_plan,
    explained,
    open_in_entry_order,
    result_from_history,
    submission_of,
)
from mfm_dist.engine.lru import Lru
from mfm_dist.engine.merge import PackedDelta
from mfm_dist.engine.progress import RunProgress, orphan_error
from mfm_dist.errors import ErrorInfo, MfmError, NotFound, RunError
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    StateCompleted,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.plan import gc_paused
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.submission import completion_message, completion_task_id
from workers import metrics as worker_metrics
from workers.delta_journal import SEGMENT_MIN, Completion, DeltaJournal
from workers.faults import is_transient
from workers.leases import CLAIMED, DELAYED, SENT, Coordination, Reservation
from workers.messages import AttemptTask, Dispatcher
from workers.outcomes import StepKind, StepOutcome
from workers.runtime import RunContext, Runtime

if TYPE_CHECKING:
    from workers.carry import Carry

log = logging.getLogger("mfm.coordinator")

MAX_ROUNDS = 64
TRANSIENT_RETRY_MS = 1000
DIRTY_ROUNDS = 8
RUN_CACHE_SIZE = 256
INLINE_LOAD_MAX_EVENTS = 2000
"""An inline continuation loads a run it has not cached only if its log is this short."""
RUN_CACHE_STATES = 500_000
"""The cached runs hold at most this many plan states in all (the run being coordinated is
always kept): a few runs of 100,000 states fit, 256 of them would not."""
PREFETCH_THREADS = 8
DISPATCH_SLICE = 256
"""Attempts per chord at most: a wide wave goes out in slices, renewing the lock in between."""
MIN_SLICE = 16
SLICE_TARGET_S = 0.2
"""A slice should take about this long to send. Its size follows the sending time per
attempt this process measured (`MIN_SLICE`..`DISPATCH_SLICE`): on a loaded machine chords get
smaller rather than steps longer."""
STEP_DISPATCH_LIMIT = 1024
"""Attempts one step dispatches at most; the rest follows in the next step."""
STEP_BUDGET_S = 0.75
"""A step sends no chord that would, at the measured rate, end past this much sending (the
rest follows in the next step; the first chord always goes). Counted from its first chord,
not from the look before it: a look at a wave of 100,000 in flight takes a few tenths of a
second, and a budget it had used up would leave each step one chord — and four times as
many looks."""
CONTINUE_SAFETY_MS = 1000
"""When a step leaves work for the next one, it sends that `advance` at once; the run's
timer is set this far ahead in case the message is lost."""
TIME_LIMIT_GRACE_S = 5.0
CARRY_ALLOWANCE_S = 5.0
"""Added to every attempt's hard limit: the time its worker may spend on carried
attempts before it (workers.carry.CARRY_BUDGET_S, which must not exceed this)."""
PENDING = "p"
"""Reservation kind while its chord is being sent: valid only inside the advance that
wrote it (flipped to `s` once sent), so a coordinator that died in between is noticed by
the next one at once."""


LEASE_GONE = "but its worker lease had expired"
"""How the coordinator knew an open attempt was orphaned (its error message)."""

COORDINATOR_REQUESTER = "mfm coordinator (run deadline)"


class _ThreadCarry(threading.local):
    """Per thread: the carry offer of the inline step it is taking (None: none)."""

    carry: Carry | None = None


class LockLost(Exception):
    """The coordinator lock expired under a long advance; someone else may coordinate."""



@dataclass
class CachedRun:
    ctx: RunContext
    history: RunHistory
    progress: RunProgress
    plan_checked: bool = False
    """The recorded plan fingerprint matched ours (checked once per cached run)."""
    unjournaled: list[Completion] = field(default_factory=list)
    """Completions applied here that the delta journal may not hold yet."""


@dataclass
class Step:
    """What one look at a run did, and when the next look is due (ms, None: finished)."""

    status: StepOutcome
    wake_ms: int | None
    head: int | None = None
    """The log head this look had seen (recorded for joins to compare)."""
    more: bool = False
    """Work was left for the next step (a wave wider than one step's slice)."""


def clock() -> float:
    """Monotonic seconds (a seam: tests give sending a cost without sleeping)."""
    return time.monotonic()


class Coordinator:
    def __init__(self, runtime: Runtime, dispatcher: Dispatcher) -> None:
        self.rt = runtime
        self.dispatcher = dispatcher
        # Runs weigh their plan's states (the run being coordinated is always kept).
        self._runs: Lru[CachedRun] = Lru(RUN_CACHE_SIZE, RUN_CACHE_STATES)
        # Several threads may coordinate different runs at once (a submission batch); the
        # Redis lock keeps one coordinator per run, this lock keeps the cache consistent.
        self._cache_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="mfm-prefetch")
        self._local = _ThreadCarry()  # this thread's carry offer (workers.carry)
        self._send_s: float | None = None  # seconds per attempt sent (a moving average)
        self.journal = DeltaJournal(runtime.redis)

    def close(self) -> None:
        """Stop the prefetch threads (a replaced coordinator must not leak them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._runs.clear()

    # -- entry point ----------------------------------------------------------------------------
    def advance(
        self, run_id: str, *, watchdog: object = None, join: bool = False
    ) -> StepOutcome:
        """What the step did (`workers.outcomes`): busy, finished, aborted (code), dispatched
        (count), waiting, idle, joined, cancelled, cancelling, lock_lost or finish_rejected
        (rule). (`watchdog` is accepted and ignored: wake-up messages of older versions carried a
        token.)

        `join`: a chord's join — skipped (`joined`) when the run's log has not grown since
        the last look, which inline continuation usually has taken already."""
        rid = str(RunId(run_id))
        coord = self.rt.coord
        if join:
            looked = coord.looked_head(rid)
            if looked is not None and looked == self.rt.events.head_seq(RunId(rid)):
                return StepOutcome.JOINED
        ttl_ms = int(self.rt.settings.lock_ttl_s * 1000)
        token = coord.try_lock(rid, ttl_ms)
        if token is None:
            coord.mark_dirty(rid, ttl_ms)
            return StepOutcome.BUSY
        lock = _Lock(coord, rid, token, ttl_ms)
        step = Step(StepOutcome.error(), self._watchdog_due())
        rounds = 0
        try:
            with self.rt.timings.phase("coord_advance"):
                while True:
                    step = self._advance_locked(rid, lock)
                    rounds += 1
                    # A step that left work for the next one lets go: the next slice queues
                    # behind other runs' advances instead of holding the worker.
                    go_on = step.wake_ms is not None and rounds < DIRTY_ROUNDS and not step.more
                    if step.wake_ms is not None:
                        coord.schedule(rid, step.wake_ms)
                    head = step.head if step.wake_ms is not None else None
                    again = coord.unlock(rid, token, head=head, go_on=go_on)
                    if again != 2:
                        token = ""  # released
                        if (again == 1 or step.more) and step.wake_ms is not None:
                            # A wake-up arrived after our last look, or work is left: one
                            # more look (no spin).
                            self.dispatcher.send_advance(rid)
                        return step.status
        except LockLost:
            log.warning("run %s: coordinator lock lost during a long advance", rid)
            step = Step(StepOutcome.LOCK_LOST, self._watchdog_due())
            return step.status
        except MfmError as exc:
            if is_transient(exc):
                step = Step(StepOutcome.retry(), now_millis() + TRANSIENT_RETRY_MS)
                raise
            if exc.info.code == "run_not_found":
                step = Step(StepOutcome.RUN_NOT_FOUND, None)  # no run to keep alive: drop its timer
                with contextlib.suppress(redis.RedisError):
                    coord.unschedule(rid)
                raise
            # A permanent fault (missing manifest, plan mismatch, corrupt history) never
            # heals: end the run with its code instead of retrying it forever.
            step = self._abort(rid, exc)
            return step.status
        except Exception as exc:
            if is_transient(exc):  # Redis down, S3 unreachable: look again soon
                step = Step(StepOutcome.retry(), now_millis() + TRANSIENT_RETRY_MS)
            raise
        finally:
            if token:  # left by an exception: keep the run watched, let go of the lock
                with contextlib.suppress(redis.RedisError):
                    if step.wake_ms is not None:
                        coord.schedule(rid, step.wake_ms)
                    coord.unlock(rid, token)
            self.rt.flush_timings()

    def advance_inline(self, run_id: str, carry: Carry | None = None) -> StepOutcome:
        """An inline continuation (an attempt that ended, a submission that started a run):
        the step is taken here if this process has the run cached or its log is short;
        a long run this process has not loaded is handed to the control queue instead,
        whose coordinator has it cached — loading 100,000 states' history (and fetching
        their snapshots) in an attempt worker would hold that worker for many seconds.

        `carry`: the calling attempt worker offers to run the step's attempt itself when the
        step dispatches exactly one (workers.carry); it is then reserved but not sent."""
        rid = str(RunId(run_id))
        with self._cache_lock:
            cached = rid in self._runs
        if not cached and self.rt.events.head_seq(RunId(rid)) > INLINE_LOAD_MAX_EVENTS:
            self.dispatcher.send_advance(rid)
            return StepOutcome.HANDED_OVER
        self._local.carry = carry
        try:
            return self.advance(rid)
        finally:
            self._local.carry = None

    def _watchdog_due(self) -> int:
        return now_millis() + int(self.rt.settings.watchdog_s * 1000)

    # -- the run cache --------------------------------------------------------------------------
    def _load(self, rid: str, renew: Callable[[], None] = lambda: None) -> CachedRun:
        """The run's cached state brought up to date with the log (built from it if not
        cached). `renew` is called between chunks of a long read (the coordinator lock)."""
        with self._cache_lock:
            cached = self._runs.get(rid)
        if cached is not None:
            try:
                if self._refresh(cached, renew):
                    return cached
                log.warning("run %s: the log no longer continues the cached history", rid)
            except MfmError as exc:
                log.warning("run %s: rebuilding cached state (%s)", rid, exc.info.code)
            self._drop(rid)
        with gc_paused():
            run = self._build(rid, renew)
        with self._cache_lock:
            self._runs.put(rid, run, len(run.progress.plan))
        return run

    def _build(self, rid: str, renew: Callable[[], None]) -> CachedRun:
        """Read the run's log in chunks, folding each into a compact history and the
        progress, so no more than one chunk of decoded envelopes is held at a time."""
        run_id = RunId(rid)
        run: CachedRun | None = None
        for chunk in read_chunks(self.rt.events, run_id, 1, LOAD_CHUNK):
            if run is None:
                history = RunHistory.from_envelopes(run_id, chunk, compact=True)
                renew()
                ctx = self.rt.run_context(str(history.started.manifest_id))
                renew()
                progress = RunProgress(
                    ctx.plan.compiled,
                    ctx.manifest.run_config,
                    self.rt.snapshots,
                    str(history.started.initial_snapshot_id),
                )
                progress.expect(self._journaled(rid, ctx.plan.compiled.position))
                run = CachedRun(ctx, history, progress)
            else:
                run.history.extend(chunk)
            self._apply(run, chunk)
            renew()
        if run is None:
            raise NotFound(f"run {rid} not found", code="run_not_found")
        run.progress.forget_expected()
        return run

    def _journaled(
        self, rid: str, position: dict[str, int]
    ) -> dict[int, tuple[str, str, PackedDelta]]:
        """The delta journal's entries by plan position (none if Redis cannot say)."""
        try:
            known = self.journal.read(rid)
        except redis.RedisError as exc:
            log.info("run %s: delta journal unavailable (%s)", rid, type(exc).__name__)
            return {}
        return {
            position[sid]: (k.snapshot_id, k.base_snapshot_id, k.delta)
            for sid, k in known.items()
            if sid in position
        }

    def _journal(self, rid: str, run: CachedRun) -> None:
        """Journal the deltas of the completions applied here once there are enough
        (workers/delta_journal.py): what a cold coordinator would otherwise recompute by
        reading two snapshots per completed state."""
        pending = run.unjournaled
        if len(pending) < SEGMENT_MIN:
            return
        head = run.history.head
        try:
            covered = self.journal.upto(rid)
            fresh = [c for c in pending if c.seq > covered] if covered <= head else pending
            if len(fresh) < SEGMENT_MIN:
                run.unjournaled = fresh
                return
            deltas = run.progress.tracker.deltas
            position = run.progress.plan.position
            entries = [
                (c, deltas[position[c.state_id]])
                for c in fresh
                if position[c.state_id] in deltas
            ]
            if self.journal.append(rid, covered, head, entries):
                run.unjournaled = []
        except redis.RedisError as exc:
            log.info("run %s: delta journal not written (%s)", rid, type(exc).__name__)

    def _apply(self, run: CachedRun, envelopes: list[EventEnvelope]) -> None:
        """Bring the progress up to date with envelopes just applied to the history."""
        position = run.ctx.plan.compiled.position
        check_states_in_plan((env.state_id for env in envelopes), position)
        self._prefetch(run, envelopes)
        run.progress.observe(run.history, envelopes)
        states = run.history.states
        for env in envelopes:
            ev = env.event
            if isinstance(ev, StateCompleted):
                record = states.get(str(ev.state_id))
                if record is not None and record.last is not None:
                    run.unjournaled.append(
                        Completion(
                            env.seq,
                            str(ev.state_id),
                            str(ev.context_snapshot_id),
                            record.last.base_snapshot_id,
                        )
                    )

    def _refresh(self, run: CachedRun, renew: Callable[[], None] = lambda: None) -> bool:
        """Apply what was appended since the cached head (in chunks); False if the log does
        not continue the cache any more (Redis lost a tail of the log and maybe took new
        appends since): then the cache is ahead of the truth and must be rebuilt.

        Re-reads the last cached envelope along with the first new ones (one round trip)."""
        history = run.history
        head = history.head
        envelopes = self.rt.events.read_range(history.run_id, head, head + LOAD_CHUNK)
        if not envelopes or envelopes[0] != history.last:
            return False
        new = envelopes[1:]
        while new:
            history.extend(new)
            self._apply(run, new)
            renew()
            if len(new) < LOAD_CHUNK:
                break
            start = history.head + 1
            new = self.rt.events.read_range(history.run_id, start, start + LOAD_CHUNK - 1)
        return True

    def _prefetch(self, run: CachedRun, envelopes: list[EventEnvelope]) -> None:
        """Load the snapshots `observe` will diff (not those whose delta is journaled), in
        parallel (they are immutable)."""
        history, progress = run.history, run.progress
        position = progress.plan.position
        wanted: set[str] = set()
        for env in envelopes:
            ev = env.event
            if isinstance(ev, StateCompleted):
                if progress.knows(position[str(ev.state_id)], str(ev.context_snapshot_id)):
                    continue
                wanted.add(str(ev.context_snapshot_id))
                record = history.states.get(str(ev.state_id))
                if record is not None and record.last is not None:
                    wanted.add(record.last.base_snapshot_id)
        if len(wanted) > 1:

            def run_all(fetch: Callable[[str], None], ids: list[str]) -> None:
                # A few batches, not one task per snapshot: submitting thousands of tiny
                # tasks costs more than the reads.
                batches = [ids[k::PREFETCH_THREADS] for k in range(PREFETCH_THREADS)]
                list(self._pool.map(lambda part: list(map(fetch, part)), batches))

            # Reads what the loads need (link records, full snapshots) in parallel; `observe`
            # then rebuilds linked snapshots in order, from memory.
            with self.rt.timings.phase("coord_prefetch"):
                self.rt.snapshots.prefetch(wanted, run_all)

    # -- one advance ----------------------------------------------------------------------------
    def _advance_locked(self, rid: str, lock: _Lock) -> Step:
        with self.rt.timings.phase("coord_load"):
            run = self._load(rid, lock.renew)
        lock.renew()
        self._journal(rid, run)
        coord = self.rt.coord
        if run.history.completed is not None:
            if not self._notify(rid, run):
                return Step(StepOutcome.NOTIFYING, now_millis() + TRANSIENT_RETRY_MS)
            self._forget(rid)
            return Step(StepOutcome.FINISHED, None)
        if not run.plan_checked:
            recorded = coord.record_plan_if_missing(rid, run.ctx.fingerprint)
            run.plan_checked = recorded == run.ctx.fingerprint
        if not run.plan_checked:
            raise RunError(
                "plan_mismatch",
                f"run {rid}: this coordinator's code expands a different plan than the run "
                "recorded; deploy the code the run was submitted with",
                details={"local": run.ctx.fingerprint},
            )
        run, request = self._cancel_request(rid, run)
        if request is not None:
            return self._cancel(rid, run, request)
        step = self._step(rid, run, lock)
        deadline = run_deadline_ms(
            run.history.started_ms, run.ctx.manifest.run_config.run_timeout_ms
        )
        if deadline is not None and step.wake_ms is not None:
            step.wake_ms = min(step.wake_ms, deadline)
        return step

    def _step(self, rid: str, run: CachedRun, lock: _Lock) -> Step:
        """Settle orphans and reservations, then dispatch what may start or finish the run."""
        wake = self._watchdog_due()
        for _ in range(MAX_ROUNDS):
            decision, wake = self._decide(rid, run, lock)
            lock.renew()
            if decision.close_orphans:
                self._close_orphans(rid, decision.close_orphans, str(run.history.started.op_id))
                run = self._load(rid, lock.renew)
                lock.renew()
                continue
            if decision.finish is not None:
                status = self._finish(rid, run, decision.finish)
                if status == StepOutcome.NOTIFYING:
                    return Step(status, now_millis() + TRANSIENT_RETRY_MS)
                if status.kind is StepKind.FINISH_REJECTED:
                    return Step(status, now_millis())  # e.g. a cancel landed: look again now
                finished = status == StepOutcome.FINISHED
                return Step(status, None if finished else wake, run.history.head)
            if decision.dispatch:
                sent, due, left = self._dispatch(rid, run, decision.dispatch, lock)
                status = StepOutcome.dispatched(sent) if sent else StepOutcome.WAITING
                if decision.more or left:
                    # A wave wider than one step: the next step sends the next slice.
                    soon = now_millis() + CONTINUE_SAFETY_MS
                    return Step(status, min(wake, due, soon), run.history.head, more=True)
                return Step(status, min(wake, due), run.history.head)
            idle = StepOutcome.WAITING if decision.in_flight else StepOutcome.IDLE
            return Step(idle, wake, run.history.head)
        return Step(StepOutcome.WAITING, wake, run.history.head)

    # -- cancellation (docs/cancellation.md) -----------------------------------------------------
    def _cancel_request(
        self, rid: str, run: CachedRun
    ) -> tuple[CachedRun, CancelRequest | None]:
        """The run's cancel request; records the run deadline's request once it is due."""
        history = run.history
        deadline = run_deadline_ms(history.started_ms, run.ctx.manifest.run_config.run_timeout_ms)
        if history.cancel is None and deadline is not None and now_millis() >= deadline:
            request = make_request(RUN_DEADLINE_REASON, COORDINATOR_REQUESTER)
            try:
                self.rt.events.append_next(RunId(rid), [request.draft(now_millis())])
                log.info("run %s: past its run deadline; cancelling", rid)
            except GuardViolation as exc:
                if exc.rule not in ("cancel_already_requested", "after_run_completed"):
                    raise
            run = self._load(rid)
        return run, run.history.cancel

    def _cancel(self, rid: str, run: CachedRun, request: CancelRequest) -> Step:
        """End a run whose cancel was requested: close every open attempt with
        `run_cancelled`, write `RunCompleted{Cancelled}` (one append), then take the
        attempts' leases away so their workers stop them at the next renewal."""
        revoked: list[str] = []
        for _ in range(MAX_ROUNDS):
            history = run.history
            if history.completed is not None:
                break
            open_now = open_in_entry_order(history)
            drafts = cancel_drafts(open_now, request, run.progress.final_snapshot())
            try:
                self.rt.events.append_next(RunId(rid), drafts)
            except GuardViolation as exc:
                if exc.rule == "after_run_completed":
                    break
                # An attempt closed itself meanwhile: look at the log again.
                log.info("run %s: cancel raced an attempt (%s); again", rid, exc.rule)
                run = self._load(rid)
                continue
            revoked = [state_id for state_id, _ in open_now]
            log.info("run %s: cancelled (%d attempts stopped)", rid, len(revoked))
            worker_metrics.run_finished(  # [metrics hook]
                history, "Cancelled", cancelled_at_ms=now_millis()
            )
            break
        else:
            return Step(StepOutcome.CANCELLING, now_millis(), run.history.head)
        self.rt.coord.revoke_leases(rid, revoked)
        run = self._load(rid)
        if not self._notify(rid, run):
            return Step(StepOutcome.NOTIFYING, now_millis() + TRANSIENT_RETRY_MS)
        self._forget(rid)
        return Step(StepOutcome.CANCELLED, None)

    def _decide(self, rid: str, run: CachedRun, lock: _Lock) -> tuple[Decision, int]:
        """Settle the reservations (drop the stale and the lost, send the due), then decide.
        Also returns when the next look is due."""
        now = now_millis()
        coord = self.rt.coord
        lease_ms = self.rt.settings.lease_ttl_ms
        wake = self._watchdog_due()
        progress = run.progress
        position = progress.plan.position
        # Grouped by value: a wide wave's reservations share a few values (one per slice).
        with self.rt.timings.phase("coord_reservations"):
            groups = coord.grouped_reservations(rid)
        open_ids = {s for s, _ in run.history.open_attempts()}
        claims = {s: r.attempt for r, states in groups if r.kind == CLAIMED for s in states}
        asked = open_ids | claims.keys()
        with self.rt.timings.phase("coord_leases"):
            leases = coord.live_leases(rid, sorted(asked))
        if any(leases.get(s) != attempt for s, attempt in claims.items()):
            # A claim without its lease: the attempt died — or finished after this look read
            # the log. Read the log again (after the leases) so a finished attempt is not
            # dispatched a second time.
            self._catch_up(rid, run)
            opened = {s for s, _ in run.history.open_attempts()} - asked
            if opened:
                leases.update(coord.live_leases(rid, sorted(opened)))
        settle_started = time.perf_counter()
        drop: list[str] = []
        due: list[tuple[str, int]] = []
        keep: dict[str, int] = {}
        queue_empty: bool | None = None
        unknown = False  # the broker could not tell the attempt queue's depth
        next_attempt = progress.next_attempt
        for r, states in groups:
            live: list[str] = []
            for state_id in states:
                i = position.get(state_id)
                if i is None or r.attempt < next_attempt[i]:
                    drop.append(state_id)  # seen in the log (or not ours): done with it
                else:
                    live.append(state_id)
            if not live:
                continue
            if r.kind == DELAYED:
                if r.deadline_ms <= now:
                    due.extend((state_id, r.attempt) for state_id in live)
                else:
                    keep.update(dict.fromkeys(live, r.attempt))
                    wake = min(wake, r.deadline_ms)
            elif r.kind == CLAIMED:
                # Valid while its worker's lease lives: a dead holder is seen at lease expiry
                # (or at once on this host), never only after the dispatch timeout.
                for state_id in live:
                    if leases.get(state_id) == r.attempt:
                        keep[state_id] = r.attempt
                    else:
                        drop.append(state_id)
            elif r.kind == PENDING:
                drop.extend(live)  # a coordinator died mid-send
            elif r.deadline_ms <= now or now - r.since_ms > lease_ms:
                # Sent a lease TTL ago and nobody claimed it: with an empty attempt queue the
                # message is gone (a worker died holding it, a broker restart dropped it).
                # Past the dispatch timeout too — but while the attempt queue holds a backlog
                # the message is most likely still in it (a wave wider than the workers drain
                # in that time), and sending it again would only double the backlog.
                if queue_empty is None:
                    depth = self.dispatcher.attempt_queue_depth()
                    queue_empty = depth == 0
                    unknown = depth is None
                expired = r.deadline_ms <= now
                if queue_empty or (expired and unknown):
                    drop.extend(live)
                else:
                    keep.update(dict.fromkeys(live, r.attempt))
            else:
                keep.update(dict.fromkeys(live, r.attempt))
                wake = min(wake, r.since_ms + lease_ms + 1)
        self.rt.timings.add("coord_settle", time.perf_counter() - settle_started)
        coord.clear_reservations(rid, drop)
        if due:
            tasks = [self._task(run, s, a, now) for s, a in due]
            self._send(rid, tasks, lock)
            keep.update(due)
        with self.rt.timings.phase("coord_decide"):
            decision = decide(
                run.history,
                progress,
                lease_alive=lambda s, a: leases.get(s) == a,
                reserved=keep,
                now_ms=now,
                limit=STEP_DISPATCH_LIMIT,
            )
        return decision, wake

    def _catch_up(self, rid: str, run: CachedRun) -> None:
        """Apply what was appended to the log since the run was loaded (best effort: a log
        that no longer continues the cache is left to the next look's rebuild)."""
        try:
            if not self._refresh(run):
                self._drop(rid)
        except MfmError as exc:
            log.warning("run %s: re-reading the log failed (%s)", rid, exc.info.code)
            self._drop(rid)

    def _close_orphans(self, rid: str, orphans: list[tuple[str, int]], op: str = "") -> None:
        for state_id, attempt in orphans:
            draft = EventDraft(
                event=StateFailed(
                    state_id=StateId(state_id),
                    error=orphan_error(LEASE_GONE),
                    failure_snapshot_id=None,
                ),
                ts_millis=now_millis(),
                state_id=StateId(state_id),
                attempt=attempt,
            )
            try:
                self.rt.events.append_next(RunId(rid), [draft])
                log.info("run %s: closed orphan %s attempt %d", rid, state_id, attempt)
                metrics.orphans_recovered(op, 1)  # [metrics hook]
            except GuardViolation:
                pass  # the attempt was closed meanwhile (by its worker or another coordinator)

    def _task(self, run: CachedRun, state_id: str, attempt: int, now: int) -> AttemptTask:
        i = run.progress.plan.position[state_id]
        base = run.progress.last_base.get(i)
        if base is None:
            base = run.progress.base_for(i)[0]
        return self._task_for(run, Dispatch(state_id, attempt, base), now)

    def _task_for(self, run: CachedRun, d: Dispatch, now: int) -> AttemptTask:
        return AttemptTask(
            run_id=str(run.history.run_id),
            manifest_id=str(run.history.started.manifest_id),
            state_id=d.state_id,
            attempt=d.attempt,
            base_snapshot_id=d.base_snapshot_id,
            plan_fingerprint=run.ctx.fingerprint,
            sent_ms=now,
            time_limit_s=self._time_limit(run, d.state_id),
        )

    def _time_limit(self, run: CachedRun, state_id: str) -> float | None:
        """The broker-side hard limit of an attempt: its timeout plus time to record it."""
        timeout_ms = run.ctx.timeout_ms(state_id, self.rt.settings.max_state_timeout_ms)
        if timeout_ms is None:
            return None
        return (
            timeout_ms / 1000.0
            + self.rt.settings.lease_ttl_s
            + TIME_LIMIT_GRACE_S
            + CARRY_ALLOWANCE_S
        )

    def _dispatch(
        self, rid: str, run: CachedRun, dispatch: list[Dispatch], lock: _Lock
    ) -> tuple[int, int, int]:
        """Send what may start now; hold back retries still in their backoff as delayed
        reservations (sent by a later look when due). Returns how many were sent, when
        the next look is due (the earliest backoff end), and how many were left for the
        next step (the step's time budget ran out)."""
        now = now_millis()
        wake = self._watchdog_due()
        delayed: dict[str, Reservation] = {}
        ready: list[AttemptTask] = []
        for d in dispatch:
            if d.countdown_s > 0:
                due = now + int(d.countdown_s * 1000)
                delayed[d.state_id] = Reservation(d.attempt, due, DELAYED, now)
                wake = min(wake, due)
            else:
                ready.append(self._task_for(run, d, now))
        self.rt.coord.reserve(rid, delayed)
        sent = self._send(rid, ready, lock, budgeted=True)
        return sent, wake, len(ready) - sent

    def _send(
        self, rid: str, tasks: list[AttemptTask], lock: _Lock, *, budgeted: bool = False
    ) -> int:
        """Reserve and send in slices; each slice is `pending` until its chord is out.
        `budgeted`: stop after the slice that used up the step's time budget (what is not
        sent is not reserved either: the next step decides it again). Returns how many
        were sent."""
        coord = self.rt.coord
        timeout_ms = int(self.rt.settings.dispatch_timeout_s * 1000)
        started = clock()
        k = 0
        while k < len(tasks):
            size, per_attempt = self._slice()
            if budgeted and k and clock() - started + size * per_attempt > STEP_BUDGET_S:
                return k
            batch = tasks[k : k + size]
            k += len(batch)
            sending = clock()
            lock.renew()
            now = now_millis()
            pending = {t.state_id: Reservation(t.attempt, now, PENDING, now) for t in batch}
            coord.reserve(rid, pending)
            carry = self._local.carry
            carried = carry is not None and carry.take(tasks)  # carries a lone attempt only
            if not carried:
                with self.rt.timings.phase("coord_send"):
                    self.dispatcher.send_chord(rid, batch)
            now = now_millis()
            # A worker may have claimed an attempt already: its claim must survive.
            coord.replace_reservations(
                rid,
                {
                    t.state_id: (
                        pending[t.state_id],
                        Reservation(t.attempt, now + timeout_ms, SENT, now),
                    )
                    for t in batch
                },
            )
            if not carried:
                self._sent(len(batch), clock() - sending)
        return len(tasks)

    def _slice(self) -> tuple[int, float]:
        """The next slice's size and the expected seconds per attempt (0 until measured)."""
        per_attempt = self._send_s
        if per_attempt is None or per_attempt <= 0:
            return DISPATCH_SLICE, 0.0
        size = int(SLICE_TARGET_S / per_attempt)
        return min(DISPATCH_SLICE, max(MIN_SLICE, size)), per_attempt

    def _sent(self, attempts: int, seconds: float) -> None:
        """Fold a slice's sending time (reservations and chord) into the moving average."""
        sample = seconds / attempts
        self._send_s = sample if self._send_s is None else (self._send_s + sample) / 2

    def _finish(self, rid: str, run: CachedRun, finish: Finish) -> StepOutcome:
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
            worker_metrics.run_finished(run.history, finish.status.value)  # [metrics hook]
        except GuardViolation as exc:
            if exc.rule != "after_run_completed":
                # Not finished: something changed under us (e.g. an attempt opened). Keep
                # the run's cache honest and its timer armed; the next advance decides.
                log.warning("run %s: RunCompleted rejected (%s); will look again", rid, exc.rule)
                self._drop(rid)
                return StepOutcome.finish_rejected(exc.rule)
            log.info("run %s: already completed by another coordinator", rid)
        run = self._load(rid)
        if not self._notify(rid, run):
            return StepOutcome.NOTIFYING
        self._forget(rid)
        return StepOutcome.FINISHED

    def _abort(self, rid: str, exc: MfmError) -> Step:
        """End a run that can never make progress, with the fault's code (docs: lifecycle).

        A history that cannot even be read back is left as it is, unscheduled: nothing can
        be appended to it safely (`mfm verify` names the fault)."""
        error = ErrorInfo(
            code=exc.info.code,
            category=exc.info.category,
            retryable=False,
            message=f"the coordinator cannot continue this run: {exc.info.message}",
        ).redacted()
        cached = self._drop(rid)
        try:
            history = RunHistory.load(self.rt.events, RunId(rid), compact=True)
        except MfmError as unreadable:
            if is_transient(unreadable):
                raise
            log.error("run %s: history unreadable (%s); unscheduled", rid, unreadable.info.code)
            self._forget(rid)
            return Step(StepOutcome.unrecoverable(unreadable.info.code), None)
        if history.completed is None:
            log.error("run %s: ending the run, permanent fault %s", rid, error.code)
            final: str | None = None
            if cached is not None:
                try:  # stores it (in full): the very store that failed may refuse
                    final = cached.progress.final_snapshot()
                except MfmError as unstorable:
                    if is_transient(unstorable):
                        raise
            self.rt.events.append_next(RunId(rid), abort_drafts(history, error, final))
            worker_metrics.run_finished(history, "Failed")  # [metrics hook]
        self._forget(rid)
        return Step(StepOutcome.aborted(error.code), None)

    def _notify(self, rid: str, run: CachedRun) -> bool:
        """Send the run's `on_complete` callback once; True when there is nothing (more) to
        send. The claim/sent marks make a repeat possible only if a coordinator dies
        between sending and marking — and then the repeat carries the same task id."""
        # The submission record is the run-level event at seq 2 (a compact history keeps
        # only run-level envelopes).
        record = submission_of([env for env in run.history.envelopes[:2] if env.seq <= 2])
        if record is None or record.on_complete is None:
            return True
        coord = self.rt.coord
        claim = coord.claim_notification(rid, int(self.rt.settings.lock_ttl_s * 1000))
        if claim is None:
            return True  # sent already
        if not claim:
            return False  # another coordinator is sending it right now
        result = explained(
            result_from_history(run.history, run.progress.plan.position), run.progress
        )
        self.dispatcher.send_callback(
            record.on_complete.task,
            record.on_complete.queue,
            completion_message(result, record),
            completion_task_id(rid),
        )
        coord.mark_notified(rid)
        log.info("run %s: sent its completion to %s", rid, record.on_complete.task)
        return True

    def _drop(self, rid: str) -> CachedRun | None:
        with self._cache_lock:
            return self._runs.pop(rid)

    def _forget(self, rid: str) -> None:
        self._drop(rid)
        self.rt.coord.forget_run(rid)


class _Lock:
    """The held coordinator lock of one advance; `renew()` before each store-heavy step
    (a round trip only once a third of the TTL has passed since the last one)."""

    def __init__(self, coord: Coordination, rid: str, token: str, ttl_ms: int) -> None:
        self._coord, self._rid, self._token, self._ttl_ms = coord, rid, token, ttl_ms
        self._renewed = time.monotonic()

    def renew(self) -> None:
        now = time.monotonic()
        if now - self._renewed < self._ttl_ms / 3000.0:
            return
        if not self._coord.renew_lock(self._rid, self._token, self._ttl_ms):
            raise LockLost(self._rid)
        self._renewed = now
