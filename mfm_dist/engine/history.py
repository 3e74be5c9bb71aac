"""Decode and check a run's event stream (docs/events.md, docs/execution.md#resume).

`RunHistory.load` reads the whole stream and verifies it before an engine acts
on it: contiguous 1-indexed seqs, the attempt-envelope rules, at most one
completion per state, and single-assignment fact bindings.

A *compact* history (`compact=True`, what a long-lived coordinator keeps) folds each
envelope into the per-state records and keeps only the run-level envelopes (those without
a state: `RunStarted`, run-level domain events, `RunCompleted`) and the last one, so its
memory is a few hundred bytes per state instead of every decoded envelope. It reads the
log in chunks of `LOAD_CHUNK` envelopes, so not even a load holds the whole stream.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from mfm_dist.engine.cancellation import CancelRequest, request_of
from mfm_dist.errors import Corruption, ErrorInfo, NotFound
from mfm_dist.events import (
    FACT_RECORDED,
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.io.base import FactRecordedPayload
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.guards import DictGuardView, GuardViolation, check_batch

LOAD_CHUNK = 4096
"""Envelopes per read when a compact history is loaded or refreshed."""


@dataclass(slots=True)
class AttemptRecord:
    attempt: int
    base_snapshot_id: str
    entered_seq: int
    outcome: str | None = None  # "completed" | "failed" | None while open
    snapshot_id: str | None = None
    error: ErrorInfo | None = None
    ts_entered: int = 0
    ts_closed: int | None = None


@dataclass(slots=True)
class StateRecord:
    state_id: str
    attempts: list[AttemptRecord] = field(default_factory=list)
    rank: int = 0
    """Order of the state's first appearance in the log (the order of `states`)."""

    @property
    def last(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def completed(self) -> bool:
        last = self.last
        return last is not None and last.outcome == "completed"

    @property
    def open_attempt(self) -> AttemptRecord | None:
        last = self.last
        return last if last is not None and last.outcome is None else None

    @property
    def snapshot_id(self) -> str | None:
        last = self.last
        return last.snapshot_id if last is not None and last.outcome == "completed" else None


def invalid_envelopes(message: str, seq: int | None, rule: str) -> Corruption:
    return Corruption("invalid_attempt_envelopes", message, details={"seq": seq, "rule": rule})


_GUARD_RULE_CODES = {
    "fact_conflict": "fact_recorded_conflict",
    "fact_malformed": "fact_recorded_malformed",
}


@dataclass
class RunHistory:
    """A checked, decoded event stream. `extend` applies newer events incrementally, so a
    long-lived coordinator re-reads only what was appended since its last look.

    `envelopes` holds every envelope, or with `compact` only the run-level ones (no
    `state_id`); `head` and `last` are always those of the whole stream."""

    run_id: RunId
    envelopes: list[EventEnvelope]
    started: RunStarted
    completed: RunCompleted | None
    states: dict[str, StateRecord]
    facts: dict[str, ArtifactId]
    domain_events: int = 0
    cancel: CancelRequest | None = None
    """The run's cancel request, once recorded (docs/cancellation.md)."""
    cancel_seq: int | None = None
    compact: bool = False
    last: EventEnvelope | None = None
    """The last envelope of the stream (also kept by a compact history)."""
    _head: int = 0
    _started_ms: int = 0
    _open: dict[str, AttemptRecord] = field(default_factory=dict, repr=False)
    _guard: DictGuardView = field(default_factory=DictGuardView, repr=False)

    @property
    def head(self) -> int:
        return self._head

    @property
    def started_ms(self) -> int:
        return self._started_ms

    def open_attempts(self) -> list[tuple[str, AttemptRecord]]:
        """The open attempts, in the order their states first appeared in the log."""
        rows = sorted(self._open.items(), key=lambda row: self.states[row[0]].rank)
        return rows

    @property
    def open_count(self) -> int:
        return len(self._open)

    @classmethod
    def load(cls, events: EventStore, run_id: RunId, *, compact: bool = False) -> RunHistory:
        history: RunHistory | None = None
        for chunk in read_chunks(events, run_id, 1, None if not compact else LOAD_CHUNK):
            if history is None:
                history = cls.from_envelopes(run_id, chunk, compact=compact)
            else:
                history.extend(chunk)
        if history is None:
            raise NotFound(f"run {run_id} not found", code="run_not_found")
        return history

    @classmethod
    def from_envelopes(
        cls, run_id: RunId, envelopes: list[EventEnvelope], *, compact: bool = False
    ) -> RunHistory:
        if not envelopes:
            raise NotFound(f"run {run_id} not found", code="run_not_found")
        first = envelopes[0].event
        if not isinstance(first, RunStarted) or envelopes[0].seq != 1:
            raise invalid_envelopes(
                "the first event is not RunStarted", envelopes[0].seq, "run_not_started"
            )
        history = cls(run_id, [], first, None, {}, {}, compact=compact)
        history._started_ms = envelopes[0].ts_millis
        history.extend(envelopes)
        return history

    def refresh(self, events: EventStore) -> list[EventEnvelope]:
        """Read and apply whatever was appended since `head`; returns the new envelopes."""
        new: list[EventEnvelope] = []
        for chunk in read_chunks(events, self.run_id, self.head + 1, None):
            self.extend(chunk)
            new.extend(chunk)
        return new

    def extend(self, envelopes: list[EventEnvelope]) -> None:
        """Check and apply envelopes that continue this history (all-or-nothing)."""
        for expected, env in enumerate(envelopes, start=self.head + 1):
            if env.seq != expected:
                raise invalid_envelopes(
                    f"sequence gap: expected seq {expected}, found {env.seq}", env.seq, "seq_gap"
                )
            if str(env.run_id) != str(self.run_id):
                raise invalid_envelopes("envelope of another run", env.seq, "foreign_run")
        try:
            changes = check_batch(self._guard, envelopes)
        except GuardViolation as exc:
            seq = exc.info.details.get("seq")
            code = _GUARD_RULE_CODES.get(exc.rule)
            if code is not None:
                raise Corruption(code, exc.info.message, details={"seq": seq}) from None
            raise invalid_envelopes(exc.info.message, seq, exc.rule) from None
        bound: dict[str, ArtifactId] = {}  # this batch's new bindings (checked, then kept)
        for env in envelopes:
            ev = env.event
            if isinstance(ev, DomainEvent) and ev.name == FACT_RECORDED:
                _index_fact(self.facts, bound, ev, env.seq)
        # Everything checked: apply.
        self._guard.apply(changes)
        self.facts.update(bound)
        states, opened = self.states, self._open
        for env in envelopes:
            ev = env.event
            if isinstance(ev, StateEntered):
                # One string object per state id, shared by every structure that keys on it.
                state_id = sys.intern(str(ev.state_id))
                record = states.get(state_id)
                if record is None:
                    record = states[state_id] = StateRecord(state_id, rank=len(states))
                att = AttemptRecord(
                    ev.attempt, _shared_id(ev.base_snapshot_id), env.seq, ts_entered=env.ts_millis
                )
                record.attempts.append(att)
                opened[state_id] = att
            elif isinstance(ev, StateCompleted):
                state_id = str(ev.state_id)
                att = states[state_id].attempts[-1]
                att.outcome, att.snapshot_id = "completed", str(ev.context_snapshot_id)
                att.ts_closed = env.ts_millis
                opened.pop(state_id, None)
            elif isinstance(ev, StateFailed):
                state_id = str(ev.state_id)
                att = states[state_id].attempts[-1]
                att.outcome, att.error = "failed", ev.error
                att.ts_closed = env.ts_millis
                opened.pop(state_id, None)
            elif isinstance(ev, RunCompleted):
                self.completed = ev
            elif isinstance(ev, DomainEvent):
                self.domain_events += 1
                if self.cancel is None:
                    request = request_of(env)
                    if request is not None:
                        self.cancel, self.cancel_seq = request, env.seq
        if self.compact:
            self.envelopes.extend(env for env in envelopes if env.state_id is None)
        else:
            self.envelopes.extend(envelopes)
        if envelopes:
            self._head += len(envelopes)
            self.last = envelopes[-1]


def read_chunks(
    events: EventStore, run_id: RunId, from_seq: int, chunk: int | None
) -> Iterator[list[EventEnvelope]]:
    """The stream from `from_seq` on, in reads of at most `chunk` envelopes (None: one
    read). Stops at the first short read (later appends are the next refresh's)."""
    if chunk is None:
        envelopes = events.read_range(run_id, from_seq, None)
        if envelopes:
            yield envelopes
        return
    start = from_seq
    while True:
        envelopes = events.read_range(run_id, start, start + chunk - 1)
        if envelopes:
            yield envelopes
        if len(envelopes) < chunk:
            return
        start += len(envelopes)


def _shared_id(artifact_id: str) -> str:
    """A snapshot id as a plain string, interned: thousands of attempts share a base."""
    return sys.intern(str(artifact_id))


def _index_fact(
    facts: dict[str, ArtifactId], bound: dict[str, ArtifactId], event: DomainEvent, seq: int
) -> None:
    try:
        payload = FactRecordedPayload.model_validate(event.payload)
    except ValidationError:
        raise Corruption(
            "fact_recorded_malformed", "a fact_recorded event is malformed", details={"seq": seq}
        ) from None
    existing = facts.get(payload.key, bound.get(payload.key))
    if existing is not None and existing != payload.payload_id:
        raise Corruption(
            "fact_recorded_conflict",
            "a fact key is bound to two payloads",
            details={"seq": seq},
        )
    bound[payload.key] = payload.payload_id
