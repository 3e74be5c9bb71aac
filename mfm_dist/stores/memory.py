"""In-memory stores: the reference behaviour of the store contract, for tests and embedding."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from mfm_dist.artifacts import ArtifactStore, KindLike
from mfm_dist.errors import NotFound
from mfm_dist.events import EventDraft, EventEnvelope
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.journal import (
    JournalDraft,
    JournalEntry,
    JournalSummary,
    check_drafts,
    check_journal_id,
    check_namespace,
)
from mfm_dist.results import RunPhase, RunQuery, RunSummary
from mfm_dist.stores.base import (
    EventStore,
    check_positions,
    stale_head,
    stale_journal,
    summary_changes,
)
from mfm_dist.stores.guards import DictGuardView, check_batch


@dataclass
class _Run:
    events: list[EventEnvelope] = field(default_factory=list)
    guard: DictGuardView = field(default_factory=DictGuardView)
    op_id: str = ""
    started_ms: int = 0
    phase: RunPhase = RunPhase.RUNNING
    ended_ms: int | None = None
    labels: dict[str, str] = field(default_factory=dict)


class InMemoryEventStore(EventStore):
    url = "memory://"

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._journals: dict[str, list[JournalEntry]] = {}
        self._lock = threading.Lock()

    def head_seq(self, run_id: RunId) -> int:
        with self._lock:
            run = self._runs.get(str(run_id))
            return len(run.events) if run else 0

    def append(self, run_id: RunId, expected_seq: int, envelopes: Sequence[EventEnvelope]) -> None:
        with self._lock:
            run = self._runs.get(str(run_id)) or _Run()
            head = len(run.events)
            if head != expected_seq:
                raise stale_head(run_id, expected_seq, head)
            self._commit(run_id, run, list(envelopes))

    def append_next(self, run_id: RunId, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
        with self._lock:
            run = self._runs.get(str(run_id)) or _Run()
            head = len(run.events)
            envelopes = [d.at(run_id, head + i) for i, d in enumerate(drafts, start=1)]
            self._commit(run_id, run, envelopes)
            return envelopes

    def _commit(self, run_id: RunId, run: _Run, envelopes: list[EventEnvelope]) -> None:
        if not envelopes:
            return
        check_positions(run_id, len(run.events), envelopes)
        changes = check_batch(run.guard, envelopes)
        run.guard.apply(changes)
        run.events.extend(envelopes)
        listing = summary_changes(envelopes)
        if listing.op_id is not None and listing.started_ms is not None:
            run.op_id, run.started_ms = listing.op_id, listing.started_ms
        if listing.phase is not None:
            run.phase = listing.phase
        if listing.ended_ms is not None:
            run.ended_ms = listing.ended_ms
        if listing.labels is not None:
            run.labels = dict(listing.labels)
        self._runs[str(run_id)] = run

    def read_range(
        self, run_id: RunId, from_seq: int = 1, to_seq: int | None = None
    ) -> list[EventEnvelope]:
        with self._lock:
            run = self._runs.get(str(run_id))
            if run is None:
                return []
            end = len(run.events) if to_seq is None else min(to_seq, len(run.events))
            return run.events[max(from_seq, 1) - 1 : end]

    def fact_binding(self, run_id: RunId, key: str) -> ArtifactId | None:
        with self._lock:
            run = self._runs.get(str(run_id))
            bound = run.guard.fact_binding(key) if run is not None else None
        return None if bound is None else ArtifactId(bound)

    def list_runs(
        self, limit: int | None = None, query: RunQuery | None = None
    ) -> list[RunSummary]:
        with self._lock:
            rows = [self._summary(rid, run) for rid, run in self._runs.items()]
        if query is not None:
            rows = [r for r in rows if query.matches(r)]
        rows.sort(key=lambda r: (r.started_ms, r.run_id), reverse=True)
        return rows[: max(limit, 0)] if limit is not None else rows

    def runs_with_prefix(self, prefix: str, limit: int = 10) -> list[RunId]:
        with self._lock:
            found = sorted(rid for rid in self._runs if rid.startswith(prefix))
        return [RunId(rid) for rid in found[: max(limit, 0)]]

    @staticmethod
    def _summary(rid: str, run: _Run) -> RunSummary:
        return RunSummary(
            run_id=RunId(rid),
            op_id=run.op_id,
            started_ms=run.started_ms,
            phase=run.phase,
            head_seq=len(run.events),
            labels=dict(run.labels),
            ended_ms=run.ended_ms,
        )

    def run_summaries(self, run_ids: Sequence[RunId]) -> dict[str, RunSummary]:
        with self._lock:
            return {
                str(rid): self._summary(str(rid), run)
                for rid in run_ids
                if (run := self._runs.get(str(rid))) is not None and run.events
            }

    # --- journals --------------------------------------------------------------------------

    def journal_head(self, journal: str) -> int:
        check_journal_id(journal)
        with self._lock:
            return len(self._journals.get(journal, ()))

    def journal_append(
        self, journal: str, expected_seq: int, drafts: Sequence[JournalDraft]
    ) -> list[JournalEntry]:
        items = check_drafts(journal, drafts)
        with self._lock:
            entries = self._journals.get(journal, [])
            head = len(entries)
            if head != expected_seq:
                raise stale_journal(journal, expected_seq, head)
            new = [d.at(journal, head + i) for i, d in enumerate(items, start=1)]
            if new:
                self._journals[journal] = [*entries, *new]
            return new

    def journal_read(
        self, journal: str, from_seq: int = 1, to_seq: int | None = None
    ) -> list[JournalEntry]:
        check_journal_id(journal)
        with self._lock:
            entries = self._journals.get(journal, [])
            end = len(entries) if to_seq is None else min(to_seq, len(entries))
            return entries[max(from_seq, 1) - 1 : end]

    def list_journals(self, namespace: str) -> list[JournalSummary]:
        check_namespace(namespace)
        prefix = namespace + "/"
        with self._lock:
            rows = [
                JournalSummary(
                    journal=name,
                    head_seq=len(entries),
                    created_ms=entries[0].ts_millis,
                    updated_ms=entries[-1].ts_millis,
                )
                for name, entries in self._journals.items()
                if name.startswith(prefix) and entries
            ]
        rows.sort(key=lambda r: (r.created_ms, r.journal), reverse=True)
        return rows


class InMemoryArtifactStore(ArtifactStore):
    url = "memory://"

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[str, bytes]] = {}
        self._lock = threading.Lock()

    def exists(self, artifact_id: str) -> bool:
        with self._lock:
            return artifact_id in self._blobs

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        with self._lock:
            self._blobs.setdefault(str(artifact_id), (str(kind), bytes(data)))
        return artifact_id

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        with self._lock:
            entry = self._blobs.get(str(artifact_id))
        if entry is None:
            raise NotFound(f"artifact {artifact_id} not found", code="artifact_not_found")
        return entry[1]

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[ArtifactId]:
        with self._lock:
            found = sorted(aid for aid in self._blobs if aid.startswith(prefix))
        return [ArtifactId(aid) for aid in found[: max(limit, 0)]]

    def tamper(self, artifact_id: str, data: bytes) -> None:
        """Overwrite stored bytes (tests of corruption detection only)."""
        with self._lock:
            kind = self._blobs[artifact_id][0]
            self._blobs[artifact_id] = (kind, data)
