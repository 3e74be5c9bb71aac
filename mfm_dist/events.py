"""Kernel and domain events and their envelope (docs/events.md)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, Tag

from mfm_dist.canonical import canonical_bytes_unchecked
from mfm_dist.errors import ErrorInfo
from mfm_dist.ids import ArtifactId, OpId, RunId, StateId
from mfm_dist.tagged import TaggedModel, tag_discriminator


class RunStatus(str, Enum):
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class RunStarted(TaggedModel):
    TAG_PATH = ("Kernel", "RunStarted")
    op_id: OpId
    manifest_id: ArtifactId
    initial_snapshot_id: ArtifactId


class StateEntered(TaggedModel):
    TAG_PATH = ("Kernel", "StateEntered")
    state_id: StateId
    attempt: int = Field(strict=True, ge=0)
    base_snapshot_id: ArtifactId


class StateCompleted(TaggedModel):
    TAG_PATH = ("Kernel", "StateCompleted")
    state_id: StateId
    context_snapshot_id: ArtifactId


class StateFailed(TaggedModel):
    TAG_PATH = ("Kernel", "StateFailed")
    state_id: StateId
    error: ErrorInfo
    failure_snapshot_id: ArtifactId | None = None


class RunCompleted(TaggedModel):
    TAG_PATH = ("Kernel", "RunCompleted")
    status: RunStatus
    final_snapshot_id: ArtifactId | None = None


class DomainEvent(TaggedModel):
    """A named, canonical, secret-free payload, or a reference to one stored as an artifact."""

    TAG_PATH = ("Domain",)
    name: str
    payload: Any = None
    payload_ref: ArtifactId | None = None


KernelEvent = RunStarted | StateEntered | StateCompleted | StateFailed | RunCompleted
TerminalEvent = StateCompleted | StateFailed

_EVENT_TAGS = {
    "Kernel/RunStarted",
    "Kernel/StateEntered",
    "Kernel/StateCompleted",
    "Kernel/StateFailed",
    "Kernel/RunCompleted",
    "Domain",
}

Event = Annotated[
    Annotated[RunStarted, Tag("Kernel/RunStarted")]
    | Annotated[StateEntered, Tag("Kernel/StateEntered")]
    | Annotated[StateCompleted, Tag("Kernel/StateCompleted")]
    | Annotated[StateFailed, Tag("Kernel/StateFailed")]
    | Annotated[RunCompleted, Tag("Kernel/RunCompleted")]
    | Annotated[DomainEvent, Tag("Domain")],
    tag_discriminator(_EVENT_TAGS),
]

FACT_RECORDED = "fact_recorded"
RUN_CANCEL_REQUESTED = "run_cancel_requested"
"""A run-level domain event: the run must stop (docs/cancellation.md). The stores guard it:
appended at most once, and no attempt may be entered after it."""


def is_cancel_request(event: object, state_id: object) -> bool:
    """Is this (event, envelope state) the run's cancel request? Only a run-level one counts."""
    return (
        state_id is None and isinstance(event, DomainEvent) and event.name == RUN_CANCEL_REQUESTED
    )


class EventEnvelope(BaseModel):
    """One persisted event. `state_id`/`attempt` attribute events written inside an attempt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: RunId
    seq: int = Field(strict=True, ge=1)
    ts_millis: int = Field(strict=True, ge=0)
    event: Event
    state_id: StateId | None = None
    attempt: int | None = Field(strict=True, default=None, ge=0)

    def to_bytes(self) -> bytes:
        """The canonical persisted form."""
        return canonical_bytes_unchecked(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes | str) -> EventEnvelope:
        return cls.model_validate(orjson.loads(data))


class EventDraft(BaseModel):
    """An event before the store assigns its sequence number."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: Event
    ts_millis: int = Field(strict=True, ge=0)
    state_id: StateId | None = None
    attempt: int | None = Field(strict=True, default=None, ge=0)

    def at(self, run_id: RunId, seq: int) -> EventEnvelope:
        return EventEnvelope(
            run_id=run_id,
            seq=seq,
            ts_millis=self.ts_millis,
            event=self.event,
            state_id=self.state_id,
            attempt=self.attempt,
        )


def event_name(event: BaseModel) -> str:
    """`StateEntered`, `fact_recorded`, …: the kernel variant or the domain event's name."""
    if isinstance(event, DomainEvent):
        return event.name
    return type(event).__name__


__all__ = [
    "FACT_RECORDED",
    "DomainEvent",
    "ErrorInfo",
    "Event",
    "EventDraft",
    "EventEnvelope",
    "KernelEvent",
    "RunCompleted",
    "RunStarted",
    "RunStatus",
    "StateCompleted",
    "StateEntered",
    "StateFailed",
    "TerminalEvent",
    "event_name",
]
