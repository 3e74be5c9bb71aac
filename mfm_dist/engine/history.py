"""Decode and check a run's event stream (docs/events.md, docs/execution.md#resume).

`RunHistory.load` reads the whole stream and verifies it before an engine acts
on it: contiguous 1-indexed seqs, the attempt-envelope rules, at most one
completion per state, and single-assignment fact bindings.
"""

from __future__ import annotations

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


@dataclass
class AttemptRecord:
    attempt: int
    base_snapshot_id: str
    entered_seq: int
    outcome: str | None = None  # "completed" | "failed" | None while open
    snapshot_id: str | None = None
    error: ErrorInfo | None = None
    ts_entered: int = 0
    ts_closed: int | None = None


@dataclass
class StateRecord:
    state_id: str
    attempts: list[AttemptRecord] = field(default_factory=list)

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
    long-lived coordinator re-reads only what was appended since its last look."""

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
    _guard: DictGuardView = field(default_factory=DictGuardView, repr=False)

    @property
    def head(self) -> int:
        return len(self.envelopes)

    @property
    def started_ms(self) -> int:
        return self.envelopes[0].ts_millis

    def open_attempts(self) -> list[tuple[str, AttemptRecord]]:
        return [(s, r.open_attempt) for s, r in self.states.items() if r.open_attempt is not None]

    @classmethod
    def load(cls, events: EventStore, run_id: RunId) -> RunHistory:
        envelopes = events.read_range(run_id, 1, None)
        if not envelopes:
            raise NotFound(f"run {run_id} not found", code="run_not_found")
        return cls.from_envelopes(run_id, envelopes)

    @classmethod
    def from_envelopes(cls, run_id: RunId, envelopes: list[EventEnvelope]) -> RunHistory:
        if not envelopes:
            raise NotFound(f"run {run_id} not found", code="run_not_found")
        first = envelopes[0].event
        if not isinstance(first, RunStarted) or envelopes[0].seq != 1:
            raise invalid_envelopes(
                "the first event is not RunStarted", envelopes[0].seq, "run_not_started"
            )
        history = cls(run_id, [], first, None, {}, {})
        history.extend(envelopes)
        return history

    def refresh(self, events: EventStore) -> list[EventEnvelope]:
        """Read and apply whatever was appended since `head`; returns the new envelopes."""
        new = events.read_range(self.run_id, self.head + 1, None)
        if new:
            self.extend(new)
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
        facts = dict(self.facts)
        for env in envelopes:
            ev = env.event
            if isinstance(ev, DomainEvent) and ev.name == FACT_RECORDED:
                _index_fact(facts, ev, env.seq)
        # Everything checked: apply.
        self._guard.apply(changes)
        self.facts = facts
        for env in envelopes:
            ev = env.event
            if isinstance(ev, StateEntered):
                record = self.states.setdefault(str(ev.state_id), StateRecord(str(ev.state_id)))
                record.attempts.append(
                    AttemptRecord(
                        ev.attempt, str(ev.base_snapshot_id), env.seq, ts_entered=env.ts_millis
                    )
                )
            elif isinstance(ev, StateCompleted):
                att = self.states[str(ev.state_id)].attempts[-1]
                att.outcome, att.snapshot_id = "completed", str(ev.context_snapshot_id)
                att.ts_closed = env.ts_millis
            elif isinstance(ev, StateFailed):
                att = self.states[str(ev.state_id)].attempts[-1]
                att.outcome, att.error = "failed", ev.error
                att.ts_closed = env.ts_millis
            elif isinstance(ev, RunCompleted):
                self.completed = ev
            elif isinstance(ev, DomainEvent):
                self.domain_events += 1
                if self.cancel is None:
                    request = request_of(env)
                    if request is not None:
                        self.cancel, self.cancel_seq = request, env.seq
        self.envelopes.extend(envelopes)


def _index_fact(facts: dict[str, ArtifactId], event: DomainEvent, seq: int) -> None:
    try:
        payload = FactRecordedPayload.model_validate(event.payload)
    except ValidationError:
        raise Corruption(
            "fact_recorded_malformed", "a fact_recorded event is malformed", details={"seq": seq}
        ) from None
    existing = facts.get(payload.key)
    if existing is not None and existing != payload.payload_id:
        raise Corruption(
            "fact_recorded_conflict",
            "a fact key is bound to two payloads",
            details={"seq": seq},
        )
    facts[payload.key] = payload.payload_id
