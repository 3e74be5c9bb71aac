"""Typed outcomes of a coordinator step and of an attempt task, and their one wire form
(docs/cluster.md#task-results).

Inside the code an outcome is a small frozen value — a kind, and for some kinds the code of
a fault, the guard rule that refused, or how many attempts were sent — compared and
branched on as such, never parsed. Where an outcome leaves the process as a Celery task's
result it is one string, `wire()`: `<kind>` or `<kind>:<detail>` (`waiting`, `dispatched:3`,
`failed:upstream_unavailable`), exactly the strings earlier versions returned, so whatever
reads task results keeps working; `from_wire` reads one back. Metrics label an outcome by
its kind alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar


class StepKind(StrEnum):
    """What one `advance` of a run did."""

    BUSY = "busy"
    """Another process holds the run's coordinator lock (it was asked to look again)."""
    JOINED = "joined"
    """A chord's join with nothing new in the log since the last look: skipped."""
    HANDED_OVER = "handed_over"
    """An inline step left to the control queue (a long run this process has not loaded)."""
    DISPATCHED = "dispatched"
    WAITING = "waiting"
    IDLE = "idle"
    NOTIFYING = "notifying"
    FINISHED = "finished"
    FINISH_REJECTED = "finish_rejected"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ABORTED = "aborted"
    UNRECOVERABLE = "unrecoverable"
    LOCK_LOST = "lock_lost"
    RUN_NOT_FOUND = "run_not_found"
    RETRY = "retry"
    """A transient fault: the run's timer looks again."""
    ERROR = "error"


class AttemptKind(StrEnum):
    """How one attempt task ended (docs/cluster.md#the-attempt-task)."""

    COMPLETED = "completed"
    SKIPPED = "skipped"
    FAILED = "failed"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    PLAN_MISMATCH = "plan_mismatch"
    ERROR = "error"


_STEP_CODED = frozenset({StepKind.ABORTED, StepKind.UNRECOVERABLE, StepKind.FINISH_REJECTED})
_STEP_MAY_CODE = frozenset({StepKind.ERROR, StepKind.RETRY})
_ATTEMPT_CODED = frozenset({AttemptKind.FAILED, AttemptKind.ERROR})


def _split(text: str) -> tuple[str, str | None]:
    head, sep, tail = text.partition(":")
    return head, (tail if sep else None)


@dataclass(frozen=True)
class StepOutcome:
    """What one coordinator step did: its kind; the fault's code (`aborted`,
    `unrecoverable`, and optionally `error`, `retry`) or the refusing guard rule
    (`finish_rejected`); for `dispatched`, how many attempts were sent (at least one —
    none sent is `waiting`)."""

    kind: StepKind
    code: str | None = None
    sent: int | None = None

    BUSY: ClassVar[StepOutcome]
    JOINED: ClassVar[StepOutcome]
    HANDED_OVER: ClassVar[StepOutcome]
    WAITING: ClassVar[StepOutcome]
    IDLE: ClassVar[StepOutcome]
    NOTIFYING: ClassVar[StepOutcome]
    FINISHED: ClassVar[StepOutcome]
    CANCELLING: ClassVar[StepOutcome]
    CANCELLED: ClassVar[StepOutcome]
    LOCK_LOST: ClassVar[StepOutcome]
    RUN_NOT_FOUND: ClassVar[StepOutcome]

    def __post_init__(self) -> None:
        kind = StepKind(self.kind)
        object.__setattr__(self, "kind", kind)
        if (self.sent is not None) != (kind is StepKind.DISPATCHED) or (
            self.sent is not None and self.sent < 1
        ):
            raise ValueError(f"{kind}: a count of sent attempts goes with dispatched only (≥ 1)")
        if kind in _STEP_CODED:
            if not self.code:
                raise ValueError(f"{kind} needs a code")
        elif self.code is not None and (kind not in _STEP_MAY_CODE or not self.code):
            raise ValueError(f"{kind} takes no code")

    @classmethod
    def dispatched(cls, sent: int) -> StepOutcome:
        return cls(StepKind.DISPATCHED, sent=sent)

    @classmethod
    def aborted(cls, code: str) -> StepOutcome:
        """The run was ended with this permanent fault's code (`run_aborted`)."""
        return cls(StepKind.ABORTED, code)

    @classmethod
    def unrecoverable(cls, code: str) -> StepOutcome:
        """The run's history cannot be read back: left as it is, unscheduled."""
        return cls(StepKind.UNRECOVERABLE, code)

    @classmethod
    def finish_rejected(cls, rule: str) -> StepOutcome:
        """`RunCompleted` was refused by this guard rule (something changed: look again)."""
        return cls(StepKind.FINISH_REJECTED, rule)

    @classmethod
    def error(cls, code: str | None = None) -> StepOutcome:
        return cls(StepKind.ERROR, code)

    @classmethod
    def retry(cls, code: str | None = None) -> StepOutcome:
        return cls(StepKind.RETRY, code)

    def wire(self) -> str:
        """The Celery result: `<kind>` or `<kind>:<code or count>`."""
        detail = self.code if self.sent is None else str(self.sent)
        return self.kind.value if detail is None else f"{self.kind.value}:{detail}"

    __str__ = wire

    @classmethod
    def from_wire(cls, text: str) -> StepOutcome:
        """The outcome `wire()` wrote (`ValueError` for anything else)."""
        head, detail = _split(text)
        kind = StepKind(head)
        if kind is StepKind.DISPATCHED:
            if detail is None or not detail.isdigit():
                raise ValueError(f"not a step outcome: {text!r}")
            return cls.dispatched(int(detail))
        return cls(kind, detail)


@dataclass(frozen=True)
class AttemptOutcome:
    """How one attempt task ended: its kind, and for `failed` the recorded error's code,
    for `error` the infrastructure fault's code."""

    kind: AttemptKind
    code: str | None = None

    COMPLETED: ClassVar[AttemptOutcome]
    SKIPPED: ClassVar[AttemptOutcome]
    DUPLICATE: ClassVar[AttemptOutcome]
    SUPERSEDED: ClassVar[AttemptOutcome]
    CANCELLED: ClassVar[AttemptOutcome]
    PLAN_MISMATCH: ClassVar[AttemptOutcome]

    def __post_init__(self) -> None:
        kind = AttemptKind(self.kind)
        object.__setattr__(self, "kind", kind)
        if (kind in _ATTEMPT_CODED) != bool(self.code):
            raise ValueError(f"{kind}: a code goes with failed and error, and only there")

    @classmethod
    def failed(cls, code: str) -> AttemptOutcome:
        return cls(AttemptKind.FAILED, code)

    @classmethod
    def error(cls, code: str) -> AttemptOutcome:
        return cls(AttemptKind.ERROR, code)

    @property
    def closed(self) -> bool:
        """The attempt's end (completed, skipped or failed) is in the log now: its
        successors may be ready."""
        return self.kind in (AttemptKind.COMPLETED, AttemptKind.SKIPPED, AttemptKind.FAILED)

    def wire(self) -> str:
        """The Celery result: `<kind>` or `<kind>:<code>`."""
        return self.kind.value if self.code is None else f"{self.kind.value}:{self.code}"

    __str__ = wire

    @classmethod
    def from_wire(cls, text: str) -> AttemptOutcome:
        """The outcome `wire()` wrote (`ValueError` for anything else)."""
        head, code = _split(text)
        return cls(AttemptKind(head), code)


StepOutcome.BUSY = StepOutcome(StepKind.BUSY)
StepOutcome.JOINED = StepOutcome(StepKind.JOINED)
StepOutcome.HANDED_OVER = StepOutcome(StepKind.HANDED_OVER)
StepOutcome.WAITING = StepOutcome(StepKind.WAITING)
StepOutcome.IDLE = StepOutcome(StepKind.IDLE)
StepOutcome.NOTIFYING = StepOutcome(StepKind.NOTIFYING)
StepOutcome.FINISHED = StepOutcome(StepKind.FINISHED)
StepOutcome.CANCELLING = StepOutcome(StepKind.CANCELLING)
StepOutcome.CANCELLED = StepOutcome(StepKind.CANCELLED)
StepOutcome.LOCK_LOST = StepOutcome(StepKind.LOCK_LOST)
StepOutcome.RUN_NOT_FOUND = StepOutcome(StepKind.RUN_NOT_FOUND)

AttemptOutcome.COMPLETED = AttemptOutcome(AttemptKind.COMPLETED)
AttemptOutcome.SKIPPED = AttemptOutcome(AttemptKind.SKIPPED)
AttemptOutcome.DUPLICATE = AttemptOutcome(AttemptKind.DUPLICATE)
AttemptOutcome.SUPERSEDED = AttemptOutcome(AttemptKind.SUPERSEDED)
AttemptOutcome.CANCELLED = AttemptOutcome(AttemptKind.CANCELLED)
AttemptOutcome.PLAN_MISMATCH = AttemptOutcome(AttemptKind.PLAN_MISMATCH)
