"""One state attempt, shared by the embedded engine and the Celery worker
(docs/execution.md#one-attempt).

The caller decides *which* attempt to run and from which base; this module runs
it and records it: `StateEntered` first, then the handler against a staged
context, then exactly one terminal event. Handler failures become `StateFailed`
(redacted); storage failures propagate and leave the attempt open for resume.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mfm_dist.artifacts import ArtifactStore, OtherArtifactKind
from mfm_dist.canonical import JsonValue, canonical_bytes
from mfm_dist.config import RunConfig
from mfm_dist.context import StagedContext
from mfm_dist.engine.cancellation import CANCELLED_CODE
from mfm_dist.engine.deadlines import (
    STATE_TIMEOUT_CODE,
    HandlerRun,
    StateTimeout,
    StopSignal,
    effective_timeout_ms,
)
from mfm_dist.engine.drafts import now_millis as now_millis  # re-exported: callers time attempts
from mfm_dist.engine.merge import Delta
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import (
    ErrorCategory,
    ErrorInfo,
    InvalidInput,
    IoError,
    MfmError,
    StateError,
    StorageError,
    error_info_from_exception,
)
from mfm_dist.events import (
    FACT_RECORDED,
    RUN_CANCEL_REQUESTED,
    DomainEvent,
    EventDraft,
    EventEnvelope,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.io.base import AttemptScope, FactIndex, IoFactory, fact_recorded_event
from mfm_dist.secrets import is_secret_string
from mfm_dist.state import EventRecorder, State, StateOutcome
from mfm_dist.stores.guards import GuardViolation

Append = Callable[[Sequence[EventDraft]], list[EventEnvelope]]
INLINE_PAYLOAD_LIMIT = 64 * 1024
RESERVED_EVENT_NAMES = frozenset(
    {
        FACT_RECORDED,
        "context_merge_conflict",
        "run_submitted",
        "run_aborted",
        RUN_CANCEL_REQUESTED,
    }
)
RESERVED_ERROR_CODES = frozenset(
    {
        "orphan_attempt_recovered",
        "plan_mismatch",
        "context_merge_conflict",
        STATE_TIMEOUT_CODE,
        CANCELLED_CODE,
    }
)
"""Codes only the engine writes; a handler raising one is recorded as `handler_reserved_code`,
so engine decisions keyed on them (e.g. orphan retries) cannot be triggered by a handler."""


@dataclass
class AttemptEnv:
    """What every attempt of one run shares."""

    run_id: RunId
    run_config: RunConfig
    artifacts: ArtifactStore
    snapshots: SnapshotStore
    facts: FactIndex
    io_factory: IoFactory
    append: Append
    fence: Callable[[], None] | None = None
    """See `AttemptScope.fence`: the distributed worker's lease check."""
    max_state_timeout_ms: int | None = None
    """The deployment's cap on any state's timeout (None: no cap; see `deadlines`)."""
    stop: StopSignal | None = None
    """Fired from outside to stop running attempts (run cancelled, lease lost)."""


@dataclass(frozen=True)
class AttemptOutcome:
    state_id: StateId
    attempt: int
    base_snapshot_id: str
    completed: bool
    snapshot_id: str | None = None
    delta: Delta | None = None
    error: ErrorInfo | None = None
    skipped: bool = False
    cause: ErrorInfo | None = None
    """The unredacted error, for in-process diagnostics only (replay); never persisted."""
    abandoned: HandlerRun | None = None
    """A timed-out handler whose thread was still running when the attempt was recorded."""
    entered: bool = True
    """False when the store refused `StateEntered` because the run's cancel was requested
    (nothing of the attempt was recorded)."""
    pending: tuple[EventDraft, ...] = ()
    """The attempt's `StateCompleted`, not yet appended (`run_attempt(defer_completion=True)`)."""


def refused_by_cancel() -> ErrorInfo:
    return ErrorInfo(
        code=CANCELLED_CODE,
        category=ErrorCategory.UNKNOWN,
        retryable=False,
        message="the run was cancelled before this attempt started",
    )


class DomainEventInvalid(InvalidInput):
    def __init__(self, message: str) -> None:
        super().__init__("domain_event_invalid", message)


class AttemptRecorder(EventRecorder):
    """Appends a handler's domain events at once, attributed to its attempt."""

    def __init__(
        self,
        env: AttemptEnv,
        state_id: StateId,
        attempt: int,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self._env = env
        self._fence = fence
        self.run_id = str(env.run_id)
        self.state_id = str(state_id)
        self.attempt = attempt

    async def emit(self, name: str, payload: JsonValue = None) -> None:
        if not isinstance(name, str) or not name or is_secret_string(name):
            raise DomainEventInvalid("domain event name must be a non-empty, non-secret string")
        if name in RESERVED_EVENT_NAMES:
            raise DomainEventInvalid(f"{name} is reserved for the engine")
        try:
            data = canonical_bytes(payload, "domain event payload")
        except MfmError as exc:
            raise DomainEventInvalid(f"domain event payload rejected: {exc.info.code}") from None
        if not self._env.run_config.keeps_domain_event(name):
            return
        if self._fence is not None:
            self._fence()
        # Record what was validated, not the caller's (mutable) object.
        event = DomainEvent(name=name, payload=orjson.loads(data))
        if len(data) > INLINE_PAYLOAD_LIMIT:
            ref = self._env.artifacts.put(OtherArtifactKind(value="domain_event_payload"), data)
            event = DomainEvent(name=name, payload=None, payload_ref=ref)
        self._env.append([_draft(event, StateId(self.state_id), self.attempt)])


def _draft(event: Any, state_id: StateId | None, attempt: int | None) -> EventDraft:
    return EventDraft(event=event, ts_millis=now_millis(), state_id=state_id, attempt=attempt)


def _fact_binder(
    env: AttemptEnv, state_id: StateId, attempt: int, fence: Callable[[], None] | None
) -> Callable[[str, ArtifactId], None]:
    def bind(key: str, payload_id: ArtifactId) -> None:
        with env.facts.lock:
            existing = env.facts.lookup(key)
            if existing == payload_id:
                return
            if existing is not None:
                raise IoError("fact_payload_conflict", "a different payload is already bound")
            if fence is not None:
                fence()
            try:
                env.append([_draft(fact_recorded_event(key, payload_id), state_id, attempt)])
            except GuardViolation as exc:
                if exc.rule != "fact_conflict":
                    raise
                # Another worker bound the key first; a retry serves its recorded payload.
                raise IoError(
                    "fact_binding_raced",
                    "another attempt bound this fact key first; retry to use its record",
                    retryable=True,
                ) from None
            env.facts.add(key, payload_id)

    return bind


def _attempt_fence(
    stopped: threading.Event, stop: StopSignal | None, outer: Callable[[], None] | None
) -> Callable[[], None]:
    """Checked before every transport call, fact binding and domain event: refuses once
    the attempt was stopped from outside (cancel) or given up (timeout), then asks the
    backend (the worker's lease)."""

    def fence() -> None:
        reason = stop.reason if stop is not None else None
        if reason is not None:
            raise reason
        if stopped.is_set():
            raise StateError(
                STATE_TIMEOUT_CODE, "the attempt was stopped at its deadline", retryable=True
            )
        if outer is not None:
            outer()

    return fence


def _enter(env: AttemptEnv, drafts: list[EventDraft], carried: Sequence[EventDraft]) -> bool:
    """Append the attempt's opening batch, after the `carried` events of the attempt before
    it (one commit); False if the run's cancel forbids it — the carried events are then
    appended on their own (closing an attempt is allowed after a cancel request)."""
    try:
        env.append([*carried, *drafts])
    except GuardViolation as exc:
        if exc.rule == "run_cancel_requested":
            if carried:
                env.append(list(carried))
            return False
        raise
    return True


def _refused(state_id: StateId, attempt: int, base_snapshot_id: str) -> AttemptOutcome:
    error = refused_by_cancel()
    return AttemptOutcome(state_id, attempt, base_snapshot_id, False, error=error, entered=False)


def run_attempt(
    env: AttemptEnv,
    state_id: StateId,
    state: State,
    attempt: int,
    base_snapshot_id: str,
    base: Mapping[str, JsonValue],
    *,
    carried: Sequence[EventDraft] = (),
    defer_completion: bool = False,
) -> AttemptOutcome:
    """Run and record one attempt. Raises only for infrastructure faults.

    `carried`: a previous attempt's deferred `StateCompleted`, appended in the same commit
    as this attempt's `StateEntered`. `defer_completion`: on success, do not append
    `StateCompleted` but return it as `pending` for the caller to carry into the next
    attempt's opening commit (or to append) — the embedded engine's sequential runs, where
    it saves one durable commit per state (docs/execution.md#one-attempt)."""
    meta = state.meta()
    entered = _draft(
        StateEntered(
            state_id=state_id, attempt=attempt, base_snapshot_id=ArtifactId(base_snapshot_id)
        ),
        state_id,
        attempt,
    )
    if env.run_config.skip_tags and set(meta.tags) & set(env.run_config.skip_tags):
        done = _draft(
            StateCompleted(state_id=state_id, context_snapshot_id=ArtifactId(base_snapshot_id)),
            state_id,
            attempt,
        )
        if not _enter(env, [entered, done], carried):
            return _refused(state_id, attempt, base_snapshot_id)
        return AttemptOutcome(
            state_id, attempt, base_snapshot_id, True, base_snapshot_id, Delta(), skipped=True
        )
    if not _enter(env, [entered], carried):
        return _refused(state_id, attempt, base_snapshot_id)
    ctx = StagedContext(base)
    stopped = threading.Event()
    fence = _attempt_fence(stopped, env.stop, env.fence)
    scope = AttemptScope(
        run_id=env.run_id,
        state_id=state_id,
        attempt=attempt,
        run_config=env.run_config,
        artifacts=env.artifacts,
        facts=env.facts,
        bind_fact=_fact_binder(env, state_id, attempt, fence),
        fence=fence,
    )
    timeout_ms = effective_timeout_ms(meta, env.run_config, env.max_state_timeout_ms)
    handler: HandlerRun | None = None
    timed_out: StateTimeout | None = None
    try:
        io = env.io_factory(scope)
        recorder = AttemptRecorder(env, state_id, attempt, fence)
        handler = HandlerRun(state.handle(ctx, io, recorder))
        try:
            if timeout_ms is None and env.stop is None:
                result = handler.run_here()
            else:
                result = handler.run_limited(timeout_ms, env.stop, stopped.set)
        except StateTimeout as exc:
            timed_out = exc
            raise
        if result is not None and not isinstance(result, StateOutcome):
            raise TypeError("a state handler returns None or a StateOutcome")
        content = ctx.merged()
        delta = ctx.delta()
        # Not re-checked: the base was verified when it was read, and every value the
        # handler wrote was checked (and copied) by `ctx.set` (docs/canonical-json.md).
        # Only the changed members are encoded when the base's encoding is cached.
        prepared = env.snapshots.prepare(base_snapshot_id, base, delta, content)
    except StorageError:
        raise
    except (Exception, asyncio.CancelledError) as exc:
        cause = error_info_from_exception(exc)
        own = exc is timed_out or (env.stop is not None and exc is env.stop.reason)
        if cause.code in RESERVED_ERROR_CODES and not own:
            cause = cause.model_copy(update={"code": "handler_reserved_code"})
        info = cause.redacted()
        env.append(
            [
                _draft(
                    StateFailed(state_id=state_id, error=info, failure_snapshot_id=None),
                    state_id,
                    attempt,
                )
            ]
        )
        abandoned = handler if handler is not None and handler.abandoned else None
        return AttemptOutcome(
            state_id,
            attempt,
            base_snapshot_id,
            False,
            error=info,
            cause=cause,
            abandoned=abandoned,
        )
    snapshot_id = env.snapshots.commit(prepared)
    done = _draft(
        StateCompleted(state_id=state_id, context_snapshot_id=snapshot_id), state_id, attempt
    )
    if defer_completion:
        return AttemptOutcome(
            state_id, attempt, base_snapshot_id, True, snapshot_id, delta, pending=(done,)
        )
    env.append([done])
    return AttemptOutcome(state_id, attempt, base_snapshot_id, True, snapshot_id, delta)
