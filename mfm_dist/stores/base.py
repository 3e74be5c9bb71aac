"""The event store interface (docs/events.md, docs/storage.md).

Every backend stores 1-indexed, contiguous, immutable envelopes per run and
enforces the envelope guards atomically with the append. Two ways to write:

* `append(run_id, expected_seq, envelopes)`: positional, all-or-nothing, fails
  with `ConcurrencyError` unless the head equals `expected_seq`;
* `append_next(run_id, drafts)`: the store assigns the next sequence numbers to a
  batch that passes the guards and returns the envelopes — the path for parallel
  writers, which must never depend on winning a positional race.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mfm_dist.errors import ConcurrencyError
from mfm_dist.events import (
    FACT_RECORDED,
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    RunStarted,
)
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.journal import JournalDraft, JournalEntry, JournalSummary
from mfm_dist.results import RunPhase, RunQuery, RunSummary
from mfm_dist.stores.guards import fact_binding_of
from mfm_dist.submission import RUN_SUBMITTED_EVENT, check_labels

SUBMISSION_SEQ = 2
"""`run_submitted` is recorded with `RunStarted`, at seq 2; only there does it label a run."""


def stale_head(run_id: str, expected: int, head: int) -> ConcurrencyError:
    return ConcurrencyError(
        f"run {run_id}: expected head {expected}, found {head}",
        code="expected_seq_mismatch",
        details={"expected_seq": expected, "head_seq": head},
    )


def stale_journal(journal: str, expected: int, head: int) -> ConcurrencyError:
    return ConcurrencyError(
        f"journal {journal}: expected head {expected}, found {head}",
        code="expected_seq_mismatch",
        details={"expected_seq": expected, "head_seq": head},
    )


def check_positions(run_id: str, expected_seq: int, envelopes: Sequence[EventEnvelope]) -> None:
    """Envelopes of one batch must belong to `run_id` and continue from `expected_seq`."""
    for offset, env in enumerate(envelopes, start=1):
        if str(env.run_id) != str(run_id) or env.seq != expected_seq + offset:
            raise ConcurrencyError(
                f"envelope {env.seq} does not continue run {run_id} at {expected_seq + offset}",
                code="envelope_position_invalid",
            )


def labels_of_submission(payload: Any) -> dict[str, str] | None:
    """The labels of a `run_submitted` payload, if they follow the label rules (sorted by
    key); None otherwise. Every store derives its listing from this one function."""
    if not isinstance(payload, dict):
        return None
    labels = payload.get("labels")
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        return None
    try:
        return check_labels(labels)
    except ValueError:
        return None


def submission_labels(env: EventEnvelope) -> dict[str, str] | None:
    """The labels a run gets from `env`: only its `run_submitted` record (run-level, seq 2)."""
    ev = env.event
    if (
        env.seq != SUBMISSION_SEQ
        or env.state_id is not None
        or not isinstance(ev, DomainEvent)
        or ev.name != RUN_SUBMITTED_EVENT
    ):
        return None
    return labels_of_submission(ev.payload)


@dataclass
class SummaryChanges:
    """What one appended batch changes in its run's listing row (None: unchanged)."""

    op_id: str | None = None
    started_ms: int | None = None
    phase: RunPhase | None = None
    ended_ms: int | None = None
    labels: dict[str, str] | None = field(default=None)


def summary_changes(envelopes: Sequence[EventEnvelope]) -> SummaryChanges:
    """The listing changes implied by a batch (op, start, phase, end time, labels)."""
    changes = SummaryChanges()
    for env in envelopes:
        if isinstance(env.event, RunStarted):
            changes.op_id, changes.started_ms = str(env.event.op_id), env.ts_millis
            changes.phase = RunPhase.RUNNING
        elif isinstance(env.event, RunCompleted):
            changes.phase = RunPhase(env.event.status.value)
            changes.ended_ms = env.ts_millis
        else:
            labels = submission_labels(env)
            if labels is not None:
                changes.labels = labels
    return changes


def prefix_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix` (non-empty)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EventStore(ABC):
    """Append-only, per-run event streams with sequence and envelope guards."""

    url: str = ""

    @property
    def missing(self) -> bool:
        """True when a read-only open found no store at its URL yet (it reads as empty)."""
        return False

    @abstractmethod
    def head_seq(self, run_id: RunId) -> int:
        """The last sequence number of the run (0 for an empty run)."""

    @abstractmethod
    def append(self, run_id: RunId, expected_seq: int, envelopes: Sequence[EventEnvelope]) -> None:
        """Append all of `envelopes` iff the head equals `expected_seq` and the guards pass."""

    @abstractmethod
    def append_next(self, run_id: RunId, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
        """Append at the current head, atomically; the store assigns and returns the seqs."""

    @abstractmethod
    def read_range(
        self, run_id: RunId, from_seq: int = 1, to_seq: int | None = None
    ) -> list[EventEnvelope]:
        """Envelopes with `from_seq <= seq <= to_seq` (to the head when `to_seq` is None)."""

    @abstractmethod
    def list_runs(
        self, limit: int | None = None, query: RunQuery | None = None
    ) -> list[RunSummary]:
        """Runs matching `query` (all runs when None), newest first (`started_ms`, then run
        id, descending); at most `limit`. Backends answer filters from their indexes."""

    def runs_with_prefix(self, prefix: str, limit: int = 10) -> list[RunId]:
        """Run ids starting with `prefix`, ascending, at most `limit`.

        This default scans the listing; backends override it with an indexed range."""
        found = sorted(s.run_id for s in self.list_runs() if str(s.run_id).startswith(prefix))
        return found[: max(limit, 0)]

    def run_summaries(self, run_ids: Sequence[RunId]) -> dict[str, RunSummary]:
        """The listing rows of the given runs that exist (by run id), in one look.

        For callers that track many runs by id (a backfill); this default filters the
        whole listing, backends override it with a keyed lookup."""
        wanted = {str(r) for r in run_ids}
        if not wanted:
            return {}
        return {str(s.run_id): s for s in self.list_runs() if str(s.run_id) in wanted}

    # --- journals (mfm_dist.journal) ------------------------------------------------------

    @abstractmethod
    def journal_head(self, journal: str) -> int:
        """The last sequence number of the journal (0 when it has no record)."""

    @abstractmethod
    def journal_append(
        self, journal: str, expected_seq: int, drafts: Sequence[JournalDraft]
    ) -> list[JournalEntry]:
        """Append all of `drafts` iff the journal's head equals `expected_seq`
        (`expected_seq_mismatch` otherwise, nothing written); returns the entries."""

    @abstractmethod
    def journal_read(
        self, journal: str, from_seq: int = 1, to_seq: int | None = None
    ) -> list[JournalEntry]:
        """Entries with `from_seq <= seq <= to_seq` (to the head when `to_seq` is None)."""

    @abstractmethod
    def list_journals(self, namespace: str) -> list[JournalSummary]:
        """The journals `<namespace>/…`, newest first (by creation)."""

    def fact_binding(self, run_id: RunId, key: str) -> ArtifactId | None:
        """The payload id bound to fact `key` in the run, or None if the key is unbound.

        Distributed workers use it to see bindings made by other workers. This
        default scans the whole history (the first binding of a key is the one
        that counts; the guards reject any later, different one); backends
        override it with an indexed lookup.
        """
        for env in self.read_range(run_id):
            ev = env.event
            if isinstance(ev, DomainEvent) and ev.name == FACT_RECORDED:
                binding = fact_binding_of(ev)
                if binding is not None and binding[0] == key:
                    return ArtifactId(binding[1])
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
