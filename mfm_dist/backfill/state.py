"""A backfill's state: the fold of its journal. Pure — no store access.

Per partition of the current issue: `pending` (no run yet), `claimed` (its run is being
started or runs: attached or new), `completed` / `failed` / `cancelled` (its run is
terminal in the event log), `rejected` (its submission was refused for good; no run),
`not_started` (the backfill was cancelled before it had a run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from mfm_dist.backfill.model import (
    CODEC,
    BackfillRecord,
    CancelRequested,
    Claimed,
    Finished,
    Issued,
    Paused,
    Rejected,
    Resumed,
    Settled,
)
from mfm_dist.errors import Corruption
from mfm_dist.journal import JournalEntry


class PartStatus(str, Enum):
    PENDING = "pending"
    CLAIMED = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    NOT_STARTED = "not_started"


TERMINAL = frozenset(
    {
        PartStatus.COMPLETED,
        PartStatus.FAILED,
        PartStatus.CANCELLED,
        PartStatus.REJECTED,
        PartStatus.NOT_STARTED,
    }
)
_SETTLED = {
    "Completed": PartStatus.COMPLETED,
    "Failed": PartStatus.FAILED,
    "Cancelled": PartStatus.CANCELLED,
}
_SKIPPED = {
    "skip_completed": PartStatus.COMPLETED,
    "skip_failed": PartStatus.FAILED,
    "skip_cancelled": PartStatus.CANCELLED,
}


class Phase(str, Enum):
    """The backfill's own phase."""

    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@dataclass
class PartState:
    status: PartStatus = PartStatus.PENDING
    generation: int = 0
    decision: str = "run"
    code: str | None = None
    message: str | None = None
    claimed_ms: int | None = None
    settled_ms: int | None = None


@dataclass
class BackfillState:
    name: str
    head: int = 0
    created_ms: int = 0
    updated_ms: int = 0
    issue: Issued | None = None
    issued_ms: int = 0
    parts: list[PartState] = field(default_factory=list)
    paused: bool = False
    paused_by: str | None = None
    cancel: CancelRequested | None = None
    finished: Finished | None = None
    finished_ms: int | None = None
    claims: list[tuple[int, int]] = field(default_factory=list)
    """(ts_millis, how many new runs) of every `claimed` record of this issue (rates)."""

    @property
    def exists(self) -> bool:
        return self.issue is not None

    @property
    def phase(self) -> Phase:
        if self.finished is not None:
            return Phase.COMPLETED if self.finished.outcome == "completed" else Phase.CANCELLED
        if self.cancel is not None:
            return Phase.CANCELLING
        if self.paused:
            return Phase.PAUSED
        return Phase.RUNNING

    def indices(self, status: PartStatus) -> list[int]:
        return [i for i, p in enumerate(self.parts) if p.status is status]

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in PartStatus}
        for part in self.parts:
            out[part.status.value] += 1
        return out

    def all_terminal(self) -> bool:
        return all(p.status in TERMINAL for p in self.parts)

    # -- the fold ---------------------------------------------------------------------------
    def apply(self, entry: JournalEntry, record: BackfillRecord) -> None:
        if entry.seq != self.head + 1:
            raise Corruption(
                "journal_record_invalid",
                f"backfill {self.name}: record {entry.seq} does not follow {self.head}",
            )
        self.head = entry.seq
        self.created_ms = self.created_ms or entry.ts_millis
        self.updated_ms = entry.ts_millis
        ts = entry.ts_millis
        if isinstance(record, Issued):
            self._issue(record, ts)
            return
        if self.issue is None:
            raise Corruption(
                "journal_record_invalid",
                f"backfill {self.name}: record {entry.seq} ({entry.kind}) before any issue",
            )
        if isinstance(record, Claimed):
            fresh = 0
            for index, generation in record.entries:
                part = self._part(index, entry)
                if part.status is not PartStatus.CLAIMED:
                    fresh += 1
                part.status, part.generation, part.claimed_ms = PartStatus.CLAIMED, generation, ts
            self.claims.append((ts, fresh))
        elif isinstance(record, Settled):
            for settled in record.entries:
                part = self._part(settled.index, entry)
                part.status, part.code, part.settled_ms = _SETTLED[settled.phase], settled.code, ts
        elif isinstance(record, Rejected):
            for rejected in record.entries:
                part = self._part(rejected.index, entry)
                part.status, part.code = PartStatus.REJECTED, rejected.code
                part.message, part.settled_ms = rejected.message, ts
        elif isinstance(record, Paused):
            self.paused, self.paused_by = True, record.by
        elif isinstance(record, Resumed):
            self.paused, self.paused_by = False, None
        elif isinstance(record, CancelRequested):
            self.cancel = record
        elif isinstance(record, Finished):
            self.finished, self.finished_ms = record, ts
            if record.outcome == "cancelled":
                for part in self.parts:
                    if part.status in (PartStatus.PENDING, PartStatus.CLAIMED):
                        part.status, part.settled_ms = PartStatus.NOT_STARTED, ts

    def _issue(self, record: Issued, ts: int) -> None:
        self.issue, self.issued_ms = record, ts
        if record.origin != "retry":  # a retry keeps a paused backfill paused
            self.paused, self.paused_by = False, None
        self.cancel = None
        self.finished, self.finished_ms, self.claims = None, None, []
        self.parts = [PartState() for _ in range(record.partitions)]
        for index, generation in record.generations:
            self.parts[index].generation = generation
        for decision, indices in record.decisions.items():
            for index in indices:
                part = self.parts[index]
                part.decision = decision
                if decision in _SKIPPED:
                    part.status, part.settled_ms = _SKIPPED[decision], ts
                elif decision == "attach":
                    part.status, part.claimed_ms = PartStatus.CLAIMED, ts

    def _part(self, index: int, entry: JournalEntry) -> PartState:
        if not 0 <= index < len(self.parts):
            raise Corruption(
                "journal_record_invalid",
                f"backfill {self.name}: record {entry.seq} names partition {index}, "
                f"the plan has {len(self.parts)}",
            )
        return self.parts[index]


def fold(
    name: str, entries: list[JournalEntry], state: BackfillState | None = None
) -> BackfillState:
    """Apply `entries` (the whole journal, or what follows `state.head`)."""
    out = state if state is not None else BackfillState(name)
    for entry in entries:
        out.apply(entry, CODEC.decode(entry))
    return out
