"""Cancelling a run: the durable request, and the events that end a cancelled run.

A cancel is first a fact in the run's own log — the run-level domain event
`run_cancel_requested{reason, requested_by}` — and only then an action. The store guards
make the request exactly-once (a second one is refused as `cancel_already_requested`, which
`request_cancel` reports as "already requested") and keep any attempt from being entered
after it (`run_cancel_requested`), so an attempt that arrives late is dropped by the store
itself. Whoever drives the run (the embedded engine, the cluster's coordinator) then stops
its running attempts and ends the run with `cancel_drafts`: each open attempt closed with
`StateFailed{run_cancelled}` (never retried) and `RunCompleted{Cancelled}`, whose final
snapshot is the merge of what completed, as for a failed run. A run that finished before
the request landed is left as it is. Semantics in docs/cancellation.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mfm_dist.canonical import canonical_bytes
from mfm_dist.engine.drafts import failed_drafts, now_millis
from mfm_dist.errors import ErrorCategory, ErrorInfo, InvalidInput, MfmError, NotFound
from mfm_dist.events import (
    RUN_CANCEL_REQUESTED,
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    RunStatus,
    is_cancel_request,
)
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.guards import GuardViolation

CANCELLED_CODE = "run_cancelled"
RUN_DEADLINE_REASON = "run_deadline_exceeded"
MAX_REASON_CHARS = 500
MAX_REQUESTER_CHARS = 200


class CancelRequest(BaseModel):
    """The payload of `run_cancel_requested`: why, and who asked (both secret-checked)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str = Field(min_length=1, max_length=MAX_REASON_CHARS)
    requested_by: str | None = Field(default=None, max_length=MAX_REQUESTER_CHARS)

    @field_validator("reason", "requested_by")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text on one line")
        return value

    def draft(self, ts_millis: int) -> EventDraft:
        payload = self.model_dump(mode="json", exclude_none=True)
        return EventDraft(
            event=DomainEvent(name=RUN_CANCEL_REQUESTED, payload=payload), ts_millis=ts_millis
        )


class CancelInvalid(InvalidInput):
    def __init__(self, message: str) -> None:
        super().__init__("cancel_request_invalid", message)


def make_request(reason: str, requested_by: str | None = None) -> CancelRequest:
    """A checked request: `cancel_request_invalid` for bad text, the secret codes of
    canonical JSON for secret-shaped text (the text is never echoed)."""
    try:
        request = CancelRequest(reason=reason, requested_by=requested_by)
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"])
        raise CancelInvalid(f"{where}: {exc.errors()[0]['msg']}") from None
    canonical_bytes(request.model_dump(mode="json", exclude_none=True), "cancel request")
    return request


def request_of(envelope: EventEnvelope) -> CancelRequest | None:
    """The request recorded by `envelope`, if it is the run's cancel request."""
    ev = envelope.event
    if not is_cancel_request(ev, envelope.state_id):
        return None
    assert isinstance(ev, DomainEvent)
    with contextlib.suppress(ValidationError, TypeError):
        return CancelRequest.model_validate(ev.payload)
    return CancelRequest(reason="(unreadable cancel request)")


def cancelled_error(request: CancelRequest) -> ErrorInfo:
    """How an attempt that was open (or refused) at cancellation is closed."""
    return ErrorInfo(
        code=CANCELLED_CODE,
        category=ErrorCategory.UNKNOWN,
        retryable=False,
        message=f"the run was cancelled: {request.reason}",
    )


class RunCancelled(MfmError):
    """Raised inside an attempt whose run was cancelled (recorded, never retried)."""

    def __init__(self, request: CancelRequest) -> None:
        info = cancelled_error(request)
        super().__init__(info.code, info.message, category=info.category, retryable=False)
        self.request = request


CancelStatus = Literal["requested", "already_requested", "finished"]


@dataclass(frozen=True)
class CancelOutcome:
    """What `request_cancel` did: `requested` (appended at `seq`), `already_requested`
    (an earlier request stands; nothing appended) or `finished` (the run had already
    ended; nothing appended — callers report it as refused)."""

    run_id: str
    status: CancelStatus
    seq: int | None = None


def request_cancel(
    events: EventStore, run_id: RunId, reason: str, requested_by: str | None = None
) -> CancelOutcome:
    """Record the run's cancel request, once. Whoever drives the run acts on it; callers
    on a cluster also wake the run's coordinator (see `workers`)."""
    request = make_request(reason, requested_by)
    if events.head_seq(run_id) == 0:
        raise NotFound(f"run {run_id} not found in {events.url}", code="run_not_found")
    try:
        appended = events.append_next(run_id, [request.draft(now_millis())])
    except GuardViolation as exc:
        if exc.rule == "cancel_already_requested":
            return CancelOutcome(str(run_id), "already_requested")
        if exc.rule == "after_run_completed":
            return CancelOutcome(str(run_id), "finished")
        raise
    return CancelOutcome(str(run_id), "requested", appended[0].seq)


def cancel_drafts(
    open_attempts: list[tuple[str, int]], request: CancelRequest, final_snapshot_id: str
) -> list[EventDraft]:
    """The events that end a cancelled run: every still-open attempt closed with
    `run_cancelled`, then `RunCompleted{Cancelled}`."""
    error = cancelled_error(request)
    return [
        *failed_drafts(open_attempts, error),
        EventDraft(
            event=RunCompleted(
                status=RunStatus.CANCELLED, final_snapshot_id=ArtifactId(final_snapshot_id)
            ),
            ts_millis=now_millis(),
        ),
    ]


def run_deadline_ms(started_ms: int, run_timeout_ms: int | None) -> int | None:
    """When a run with an overall timeout is cancelled (`run_deadline_exceeded`)."""
    return None if run_timeout_ms is None else started_ms + run_timeout_ms
