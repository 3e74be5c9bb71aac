"""One state attempt (CONTRACT §7.2), shared by the embedded engine and the Celery worker.

The caller decides *which* attempt to run and from which base; this module runs
it and records it: `StateEntered` first, then the handler against a staged
context, then exactly one terminal event. Handler failures become `StateFailed`
(redacted); storage failures propagate and leave the attempt open for resume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mfm_dist.artifacts import ArtifactStore, OtherArtifactKind
from mfm_dist.canonical import JsonValue, canonical_bytes
from mfm_dist.config import RunConfig
from mfm_dist.context import StagedContext
from mfm_dist.engine.merge import Delta, compute_delta
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import (
    ErrorInfo,
    InvalidInput,
    IoError,
    MfmError,
    StorageError,
    error_info_from_exception,
)
from mfm_dist.events import (
    FACT_RECORDED,
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
RESERVED_EVENT_NAMES = frozenset({FACT_RECORDED, "context_merge_conflict"})
RESERVED_ERROR_CODES = frozenset(
    {"orphan_attempt_recovered", "plan_mismatch", "context_merge_conflict"}
)
"""Codes only the engine writes; a handler raising one is recorded as `handler_reserved_code`,
so engine decisions keyed on them (e.g. orphan retries) cannot be triggered by a handler."""


def now_millis() -> int:
    return time.time_ns() // 1_000_000


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a handler coroutine on a fresh event loop owned by the calling thread.

    A loop per attempt keeps attempts isolated; like `asyncio.run`, tasks the handler
    left behind are cancelled and drained before the loop closes, so nothing leaks.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


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


class DomainEventInvalid(InvalidInput):
    def __init__(self, message: str) -> None:
        super().__init__("domain_event_invalid", message)


class AttemptRecorder(EventRecorder):
    """Appends a handler's domain events at once, attributed to its attempt."""

    def __init__(self, env: AttemptEnv, state_id: StateId, attempt: int) -> None:
        self._env = env
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
        # Record what was validated, not the caller's (mutable) object.
        event = DomainEvent(name=name, payload=orjson.loads(data))
        if len(data) > INLINE_PAYLOAD_LIMIT:
            ref = self._env.artifacts.put(OtherArtifactKind(value="domain_event_payload"), data)
            event = DomainEvent(name=name, payload=None, payload_ref=ref)
        self._env.append([_draft(event, StateId(self.state_id), self.attempt)])


def _draft(event: Any, state_id: StateId | None, attempt: int | None) -> EventDraft:
    return EventDraft(event=event, ts_millis=now_millis(), state_id=state_id, attempt=attempt)


def _fact_binder(
    env: AttemptEnv, state_id: StateId, attempt: int
) -> Callable[[str, ArtifactId], None]:
    def bind(key: str, payload_id: ArtifactId) -> None:
        with env.facts.lock:
            existing = env.facts.lookup(key)
            if existing == payload_id:
                return
            if existing is not None:
                raise IoError("fact_payload_conflict", "a different payload is already bound")
            if env.fence is not None:
                env.fence()
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


def run_attempt(
    env: AttemptEnv,
    state_id: StateId,
    state: State,
    attempt: int,
    base_snapshot_id: str,
    base: Mapping[str, JsonValue],
) -> AttemptOutcome:
    """Run and record one attempt. Raises only for infrastructure faults."""
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
        env.append([entered, done])
        return AttemptOutcome(
            state_id, attempt, base_snapshot_id, True, base_snapshot_id, Delta(), skipped=True
        )
    env.append([entered])
    ctx = StagedContext(base)
    scope = AttemptScope(
        run_id=env.run_id,
        state_id=state_id,
        attempt=attempt,
        run_config=env.run_config,
        artifacts=env.artifacts,
        facts=env.facts,
        bind_fact=_fact_binder(env, state_id, attempt),
        fence=env.fence,
    )
    try:
        io = env.io_factory(scope)
        result = run_coroutine(state.handle(ctx, io, AttemptRecorder(env, state_id, attempt)))
        if result is not None and not isinstance(result, StateOutcome):
            raise TypeError("a state handler returns None or a StateOutcome")
        content = ctx.merged()
        snapshot_bytes = canonical_bytes(content, "context snapshot")
    except StorageError:
        raise
    except (Exception, asyncio.CancelledError) as exc:
        cause = error_info_from_exception(exc)
        if cause.code in RESERVED_ERROR_CODES:
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
        return AttemptOutcome(state_id, attempt, base_snapshot_id, False, error=info, cause=cause)
    snapshot_id = env.snapshots.save_bytes(snapshot_bytes, content)
    env.append(
        [
            _draft(
                StateCompleted(state_id=state_id, context_snapshot_id=snapshot_id),
                state_id,
                attempt,
            )
        ]
    )
    return AttemptOutcome(
        state_id, attempt, base_snapshot_id, True, snapshot_id, compute_delta(base, content)
    )
