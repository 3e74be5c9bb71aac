"""States: the unit of work of a plan (docs/plans.md)."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, Tag, field_validator

from mfm_dist.canonical import JsonValue
from mfm_dist.config import Duration, positive_duration
from mfm_dist.tagged import NewtypeVariant, OptionalExtensions, tag_discriminator

if TYPE_CHECKING:
    from mfm_dist.context import StagedContext
    from mfm_dist.io.base import IoProvider


class SideEffects(str, Enum):
    PURE = "Pure"
    READ_ONLY_IO = "ReadOnlyIo"
    APPLY_SIDE_EFFECT = "ApplySideEffect"


class IdempotencyKey(NewtypeVariant):
    """`Key(k)`: the fact key whose binding proves a side effect happened."""

    TAG_PATH = ("Key",)


Idempotency = Annotated[
    Annotated[Literal["None"], Tag("None")] | Annotated[IdempotencyKey, Tag("Key")],
    tag_discriminator({"None", "Key"}),
]


class DependencyStrategy(str, Enum):
    """How `depends_on` tag hints are meant (planning aid only; edges govern execution)."""

    LATEST = "Latest"
    ALL = "All"


class StateMeta(OptionalExtensions):
    """What the engine needs to know about a state besides its handler.

    `timeout`: how long one attempt may run before it is stopped and recorded as a
    retryable `StateFailed{state_timeout}` (the run config's `state_timeout` applies when
    unset; a deployment maximum caps both)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("timeout",)

    tags: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    depends_on_strategy: DependencyStrategy = DependencyStrategy.LATEST
    side_effects: SideEffects = SideEffects.PURE
    idempotency: Idempotency = "None"
    timeout: Duration | None = None

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: Duration | None) -> Duration | None:
        return positive_duration(value, "timeout")


class SnapshotPolicy(str, Enum):
    NEVER = "Never"
    ON_SUCCESS = "OnSuccess"
    ALWAYS = "Always"


class StateOutcome(BaseModel):
    """A handler's result. The engine checkpoints after every state regardless of `snapshot`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    snapshot: SnapshotPolicy = SnapshotPolicy.ON_SUCCESS


class EventRecorder(ABC):
    """Lets a handler record domain events, attributed to its attempt.

    It also tells the handler which attempt it is (`run_id`, `state_id`,
    `attempt`), e.g. to label outputs; results must not depend on it.
    """

    run_id: str
    state_id: str
    attempt: int

    @abstractmethod
    async def emit(self, name: str, payload: JsonValue = None) -> None:
        """Append a domain event now (dropped by the `Minimal` profile)."""


class State(ABC):
    """A unit of work. States do not own their ids: the plan assigns them."""

    def meta(self) -> StateMeta:
        return StateMeta()

    @abstractmethod
    async def handle(
        self, ctx: StagedContext, io: IoProvider, rec: EventRecorder
    ) -> StateOutcome | None:
        """Read and write `ctx`, do IO only through `io`; raise to fail the attempt."""


Handler = Callable[["StagedContext", "IoProvider", EventRecorder], Any]


class FnState(State):
    """A state from a plain function (sync or async) and its meta.

    A synchronous function runs on the attempt's own thread, so blocking code in
    one branch of a fan-out does not hold up the others.
    """

    def __init__(self, fn: Handler, meta: StateMeta | None = None) -> None:
        self._fn = fn
        self._meta = meta or StateMeta()

    def meta(self) -> StateMeta:
        return self._meta

    async def handle(
        self, ctx: StagedContext, io: IoProvider, rec: EventRecorder
    ) -> StateOutcome | None:
        result = self._fn(ctx, io, rec)
        if inspect.isawaitable(result):
            result = await result
        if result is None or isinstance(result, StateOutcome):
            return result
        raise TypeError("a state handler returns None or a StateOutcome")


def state(
    *,
    tags: list[str] | None = None,
    side_effects: SideEffects = SideEffects.PURE,
    idempotency_key: str | None = None,
) -> Callable[[Handler], FnState]:
    """Decorator: turn a function `(ctx, io, rec)` into a `State`."""

    def wrap(fn: Handler) -> FnState:
        meta = StateMeta(
            tags=list(tags or []),
            side_effects=side_effects,
            idempotency=IdempotencyKey(value=idempotency_key) if idempotency_key else "None",
        )
        return FnState(fn, meta)

    return wrap


AsyncHandler = Callable[..., Awaitable[Any]]
