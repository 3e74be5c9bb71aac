"""The embedded engine: sequential and fan-out/join execution in one process (docs/execution.md).

Attempts run on worker threads, each with its own event loop, so a handler that
blocks (CPU work, a synchronous library) never holds up other branches. At most
`max_concurrency` attempts are in flight. All appends go through one `RunWriter`
per run, which assigns sequence numbers and guards them with the store's
expected-seq check — a second process writing the same run is detected, not
interleaved.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.engine import interruptible
from mfm_dist.engine.attempt import AttemptEnv, AttemptOutcome, now_millis, run_attempt
from mfm_dist.engine.base import ExecutionEngine
from mfm_dist.engine.cancellation import (
    RUN_DEADLINE_REASON,
    CancelRequest,
    RunCancelled,
    cancel_drafts,
    cancelled_error,
    make_request,
    request_of,
    run_deadline_ms,
)
from mfm_dist.engine.deadlines import StopSignal
from mfm_dist.engine.lifecycle import (
    CONFLICT_EVENT,
    explained,
    load_run,
    record_run_start,
    result_from_history,
    validate_start,
)
from mfm_dist.engine.progress import RunProgress, orphan_error
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import ConcurrencyError
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    RunStatus,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.io.base import FactIndex, IoFactory
from mfm_dist.manifest import RunManifest
from mfm_dist.operations import OperationRegistry
from mfm_dist.plan import ExecutionPlan
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.submission import SubmissionRecord

EventListener = Callable[[EventEnvelope], None]
log = logging.getLogger("mfm.engine")


@dataclass
class _Ticket:
    drafts: Sequence[EventDraft]
    envelopes: list[EventEnvelope] | None = None
    error: BaseException | None = None


class RunWriter:
    """Serializes one run's appends in this process, keeps its head, and group-commits.

    Attempts running in parallel each need their events durable before they go on
    (`StateEntered` before the handler runs). Batches that queue up while a commit is in
    flight are written together by the next committer, in one store transaction with
    consecutive sequence numbers — one fsync for many attempts — and each caller gets back
    exactly its own envelopes. Order within a caller's batch is kept; the guards still
    check every event.
    """

    def __init__(
        self,
        events: EventStore,
        run_id: RunId,
        head: int,
        listener: EventListener | None = None,
        on_cancel: Callable[[CancelRequest], None] | None = None,
    ) -> None:
        self._events = events
        self._run_id = run_id
        self._head = head
        self._commit = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._listener = listener
        self._on_cancel = on_cancel

    @property
    def head(self) -> int:
        return self._head

    def poll(self) -> None:
        """Take in a cancel request another process appended (docs/cancellation.md)."""
        with self._commit:
            if self._events.head_seq(self._run_id) > self._head:
                self._absorb()

    def append(self, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
        ticket = _Ticket(drafts)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._commit:
            if ticket.envelopes is None and ticket.error is None:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._write(batch)
        if ticket.error is not None:
            raise ticket.error
        assert ticket.envelopes is not None
        return ticket.envelopes

    def _write(self, batch: list[_Ticket]) -> None:
        """Commit every queued ticket in one append (called with the commit lock held).

        If the combined append is refused by a guard, each ticket is retried on its own, so
        only the caller whose events broke a rule gets the error."""
        try:
            self._append(batch)
        except GuardViolation as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            for ticket in batch:
                try:
                    self._append([ticket])
                except BaseException as own:
                    _fail([ticket], own)
        except BaseException as exc:
            _fail(batch, exc)

    def _append(self, batch: list[_Ticket]) -> None:
        try:
            self._append_at_head(batch)
        except ConcurrencyError as exc:
            # The only event another process may add to a run this writer drives is its
            # cancel request: take it in and write after it (the guards then decide).
            if exc.info.code != "expected_seq_mismatch" or not self._absorb():
                raise
            self._append_at_head(batch)

    def _absorb(self) -> bool:
        """Move the head past a foreign cancel request; False if anything else was found."""
        new = self._events.read_range(self._run_id, self._head + 1, None)
        if not new or any(request_of(env) is None for env in new):
            return False
        self._head = new[-1].seq
        self._published(new)
        return True

    def _published(self, envelopes: list[EventEnvelope]) -> None:
        """Tell the listener (in seq order: called under the commit lock) and the engine."""
        for env in envelopes:
            if self._listener is not None:
                try:
                    self._listener(env)
                except Exception:  # a display must never fail the run it displays
                    log.exception("event listener failed on seq %s", env.seq)
            request = request_of(env)
            if request is not None and self._on_cancel is not None:
                self._on_cancel(request)

    def _append_at_head(self, batch: list[_Ticket]) -> None:
        envelopes: list[EventEnvelope] = []
        for ticket in batch:
            start = self._head + len(envelopes)
            ticket.envelopes = [
                d.at(self._run_id, start + i) for i, d in enumerate(ticket.drafts, start=1)
            ]
            envelopes.extend(ticket.envelopes)
        self._events.append(self._run_id, self._head, envelopes)
        self._head += len(envelopes)
        self._published(envelopes)


def _fail(batch: list[_Ticket], exc: BaseException) -> None:
    """Hand `exc` to every ticket of a failed batch (each caller re-raises it)."""
    for ticket in batch:
        ticket.envelopes, ticket.error = None, exc



RESUMED = "when the run was resumed"
"""How resume knew an open attempt was orphaned (its error message)."""

POLL_S = 0.2
"""How often a driving engine looks for a cancel request from another process."""


class _RunControl:
    """What the engine watches besides its attempts while a run executes: a cancel request,
    made by another process (`mfm cancel`) or by this one when the run's deadline passes.
    Once it is seen, running attempts are stopped through `stop` and nothing new starts."""

    def __init__(self, deadline_ms: int | None) -> None:
        self.stop = StopSignal()
        self.request: CancelRequest | None = None
        self.deadline_ms = deadline_ms
        self.writer: RunWriter | None = None
        self._polled = 0.0

    def cancelled(self, request: CancelRequest) -> None:
        if self.request is None:
            self.request = request
        self.stop.stop(RunCancelled(request))

    def poll(self) -> None:
        """At most every `POLL_S`: record the deadline's cancel, or take in a foreign one."""
        now = time.monotonic()
        if self.request is not None or self.writer is None or now - self._polled < POLL_S:
            return
        self._polled = now
        if self.deadline_ms is not None and now_millis() >= self.deadline_ms:
            request = make_request(RUN_DEADLINE_REASON, ENGINE_REQUESTER)
            try:
                self.writer.append([request.draft(now_millis())])
            except GuardViolation as exc:
                if exc.rule != "cancel_already_requested":
                    raise
            return
        self.writer.poll()

    def bound(self, timeout: float | None) -> float:
        """A wait of at most `timeout` that still lets the next `poll` happen on time."""
        limit = POLL_S if timeout is None else min(timeout, POLL_S)
        return max(0.0, limit)


ENGINE_REQUESTER = "mfm-engine (run deadline)"


@dataclass(order=True)
class _Delayed:
    ready_at: float
    index: int = field(compare=True)


class LocalEngine(ExecutionEngine):
    """Runs plans in this process against any event and artifact store."""

    def __init__(
        self,
        events: EventStore,
        artifacts: ArtifactStore,
        registry: OperationRegistry | None = None,
        io_factory: IoFactory | None = None,
        *,
        listener: EventListener | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_state_timeout_ms: int | None = None,
    ) -> None:
        """`max_state_timeout_ms`: this deployment's cap on any state's timeout, and the
        timeout of states that declare none (None: no cap; docs: deadlines)."""
        self.events = events
        self.artifacts = artifacts
        self.registry = registry
        self._io_factory = io_factory
        self.listener = listener
        self._sleep = sleep
        self.max_state_timeout_ms = max_state_timeout_ms
        self.snapshots = SnapshotStore(artifacts)

    @property
    def io_factory(self) -> IoFactory:
        if self._io_factory is None:
            if self.registry is not None:
                self._io_factory = self.registry.io_factory()
            else:
                from mfm_dist.io.factory import default_io_factory

                self._io_factory = default_io_factory()
        return self._io_factory

    # -- public API ---------------------------------------------------------------------------
    def start(
        self,
        *,
        plan: ExecutionPlan,
        run_config: RunConfig,
        manifest: RunManifest,
        manifest_id: str,
        initial_context: Mapping[str, JsonValue],
        run_id: RunId | None = None,
        submission: SubmissionRecord | None = None,
    ) -> RunResult:
        """`submission`: recorded as the run's `run_submitted` event (seq 2, in the same
        append as `RunStarted`) — its labels, never part of the manifest."""
        initial = validate_start(
            self.artifacts,
            registry=self.registry,
            plan=plan,
            run_config=run_config,
            manifest=manifest,
            manifest_id=manifest_id,
            initial_context=initial_context,
        )
        io_factory = self.io_factory
        rid, initial_id = record_run_start(
            self.events,
            self.artifacts,
            plan=plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
            run_id=run_id,
            submission=submission,
        )
        first = self.events.read_range(rid, 1, 1)
        if self.listener is not None:
            for env in first:
                self.listener(env)
        progress = RunProgress(plan.compiled, run_config, self.snapshots, str(initial_id))
        control = _RunControl(run_deadline_ms(first[0].ts_millis, run_config.run_timeout_ms))
        head = 1 if submission is None else 2
        writer = RunWriter(self.events, rid, head, self.listener, control.cancelled)
        return self._drive(rid, progress, writer, control, FactIndex(), io_factory)

    def resume(self, run_id: RunId) -> RunResult:
        if self.registry is None:
            raise ValueError("resume needs an OperationRegistry to re-derive the plan")
        loaded = load_run(self.events, self.artifacts, self.registry, RunId(run_id))
        history = loaded.history
        run_config = loaded.manifest.run_config
        progress = RunProgress.from_history(
            history, loaded.plan.compiled, run_config, self.snapshots
        )
        if history.completed is not None:
            return explained(result_from_history(history), progress)  # as `start` said
        control = _RunControl(run_deadline_ms(history.started_ms, run_config.run_timeout_ms))
        writer = RunWriter(
            self.events, history.run_id, history.head, self.listener, control.cancelled
        )
        if history.cancel is not None:
            # Cancelled while no driver was running: close what was open, end it Cancelled.
            control.cancelled(history.cancel)
            open_now = [(sid, att.attempt) for sid, att in history.open_attempts()]
            final_id = progress.final_snapshot()
            writer.append(cancel_drafts(open_now, history.cancel, final_id))
            return _cancelled_result(history.run_id, history.cancel, final_id)
        facts = FactIndex(history.facts)
        io_factory = self.io_factory
        orphans = history.open_attempts()
        if orphans:
            writer.append(
                [
                    EventDraft(
                        event=StateFailed(
                            state_id=StateId(sid),
                            error=orphan_error(RESUMED),
                            failure_snapshot_id=None,
                        ),
                        ts_millis=now_millis(),
                        state_id=StateId(sid),
                        attempt=att.attempt,
                    )
                    for sid, att in orphans
                ]
            )
            for sid, _ in orphans:
                progress.record_failed(progress.index(sid), orphan_error(RESUMED), now_millis())
        return self._drive(history.run_id, progress, writer, control, facts, io_factory)

    # -- execution ----------------------------------------------------------------------------
    def _drive(
        self,
        run_id: RunId,
        progress: RunProgress,
        writer: RunWriter,
        control: _RunControl,
        facts: FactIndex,
        io_factory: IoFactory,
    ) -> RunResult:
        control.writer = writer
        env = AttemptEnv(
            run_id=run_id,
            run_config=progress.run_config,
            artifacts=self.artifacts,
            snapshots=self.snapshots,
            facts=facts,
            io_factory=io_factory,
            append=writer.append,
            max_state_timeout_ms=self.max_state_timeout_ms,
            stop=control.stop,
        )
        self._execute(env, progress, control)
        return self._finish(run_id, progress, writer, control)

    def _execute(self, env: AttemptEnv, progress: RunProgress, control: _RunControl) -> None:
        """Run attempts until no state can run. Sequential runs stop at the first failure;
        fan-out runs keep running every state that does not depend on a failure or a merge
        conflict, so what completes never depends on timing. Infrastructure errors
        propagate once in-flight attempts have settled (their attempts stay open). A cancel
        request stops the running attempts and starts nothing new."""
        plan = progress.plan
        max_conc = progress.run_config.max_concurrency
        ready: list[int] = []
        delayed: list[_Delayed] = []
        now_ms, now = now_millis(), time.monotonic()

        def schedule(i: int) -> None:
            not_before = progress.retry_at_ms.get(i, 0)
            if not_before > now_millis():
                heapq.heappush(delayed, _Delayed(now + (not_before - now_ms) / 1000, i))
            else:
                heapq.heappush(ready, i)

        candidates = [i for i in range(len(plan)) if progress.runnable(i)]
        if progress.fan_out:
            for i in candidates:
                schedule(i)
        elif candidates and progress.failure() == (None, None):
            schedule(candidates[0])
        running: dict[Future[AttemptOutcome], int] = {}
        infra: BaseException | None = None
        # Sequential runs: a completed state's `StateCompleted` is carried into the next
        # state's opening commit (one durable commit per state instead of two); when no
        # attempt starts at once to carry it, it is appended on its own.
        defer = not progress.fan_out
        pending: list[EventDraft] = []
        pool = ThreadPoolExecutor(max_workers=max_conc, thread_name_prefix="mfm-attempt")
        try:
            while True:
                control.poll()
                cancelled = control.request is not None
                now_ms, now = now_millis(), time.monotonic()
                while delayed and delayed[0].ready_at <= now:
                    heapq.heappush(ready, heapq.heappop(delayed).index)
                while infra is None and not cancelled and ready and len(running) < max_conc:
                    i = heapq.heappop(ready)
                    if not progress.runnable(i):
                        continue
                    attempt = progress.next_attempt[i]
                    base_id, base = progress.base_for(i)
                    progress.record_attempt(i, attempt, base_id)
                    carried, pending = pending, []
                    fut = pool.submit(
                        run_attempt,
                        env,
                        plan.order[i],
                        plan.states[i],
                        attempt,
                        base_id,
                        base,
                        carried=carried,
                        defer_completion=defer,
                    )
                    running[fut] = i
                if pending:
                    env.append(pending)
                    pending = []
                if not running and (
                    infra is not None or cancelled or (not ready and not delayed)
                ):
                    break
                timeout = None
                if delayed and infra is None:
                    timeout = max(0.0, delayed[0].ready_at - time.monotonic())
                if not running:
                    self._sleep(control.bound(timeout))
                    continue
                done, _ = wait(
                    list(running), timeout=control.bound(timeout), return_when=FIRST_COMPLETED
                )
                for fut in done:
                    i = running.pop(fut)
                    try:
                        outcome = fut.result()
                    except BaseException as exc:
                        infra = infra or exc
                        continue
                    if not outcome.entered:  # refused: the run's cancel was requested
                        continue
                    if outcome.completed:
                        assert outcome.snapshot_id is not None and outcome.delta is not None
                        pending.extend(outcome.pending)
                        progress.record_completed(i, outcome.snapshot_id, outcome.delta)
                        if progress.fan_out:
                            for j in plan.succs[i]:
                                if progress.runnable(j):
                                    schedule(j)
                        elif i + 1 < len(plan) and progress.runnable(i + 1):
                            schedule(i + 1)
                        continue
                    assert outcome.error is not None
                    progress.record_failed(i, outcome.error, now_millis())
                    if progress.retry_allowed(i) and control.request is None:
                        schedule(i)
        finally:
            interruptible.shutdown(pool, list(running))  # still hears a second Ctrl-C
        if infra is not None:
            raise infra

    def _finish(
        self, run_id: RunId, progress: RunProgress, writer: RunWriter, control: _RunControl
    ) -> RunResult:
        if control.request is None:
            try:
                return self._complete(run_id, progress, writer)
            except GuardViolation as exc:
                # A cancel request landed just before RunCompleted: the run ends Cancelled.
                if exc.rule != "run_cancel_requested" or control.request is None:
                    raise
        request = control.request
        final_id = progress.final_snapshot()
        writer.append(cancel_drafts([], request, final_id))
        return _cancelled_result(run_id, request, final_id)

    def _complete(self, run_id: RunId, progress: RunProgress, writer: RunWriter) -> RunResult:
        failed, error = progress.failure()
        ok = error is None and progress.is_done()
        final_id = progress.final_snapshot()
        drafts: list[EventDraft] = []
        conflict = progress.conflict
        if (
            failed is None
            and conflict is not None
            and progress.run_config.keeps_domain_event(CONFLICT_EVENT)
        ):
            drafts.append(
                EventDraft(
                    event=DomainEvent(name=CONFLICT_EVENT, payload=conflict.payload()),
                    ts_millis=now_millis(),
                )
            )
        failed_state = progress.state_id(failed) if failed is not None else None
        status = RunStatus.COMPLETED if ok else RunStatus.FAILED
        drafts.append(
            EventDraft(
                event=RunCompleted(status=status, final_snapshot_id=ArtifactId(final_id)),
                ts_millis=now_millis(),
            )
        )
        writer.append(drafts)
        return RunResult(
            run_id=run_id,
            phase=RunPhase.COMPLETED if ok else RunPhase.FAILED,
            final_snapshot_id=ArtifactId(final_id),
            failed_state=failed_state,
            error=error,
        )


def _cancelled_result(run_id: RunId, request: CancelRequest, final_id: str) -> RunResult:
    return RunResult(
        run_id=run_id,
        phase=RunPhase.CANCELLED,
        final_snapshot_id=ArtifactId(final_id),
        error=cancelled_error(request),
    )
