"""Envelope guards (docs/events.md, docs/storage.md) shared by the Python-side event stores.

A store checks each batch against its run's guard view before appending, inside
the same transaction, so a duplicate or late delivery can never corrupt a
history. The Redis backend enforces the same rules in its Lua script; the store
contract suite holds them to one behaviour.

Beyond the attempt envelope, three run-level invariants are guarded here because
only the store can enforce them across distributed writers: a state completes at
most once per run (`state_already_completed`), fact keys are single
assignment (`fact_conflict`; a binding that cannot be read is `fact_malformed`),
and a run's cancel request is recorded once (`cancel_already_requested`), after
which no attempt may be entered and the run may only end `Cancelled`
(`run_cancel_requested`; `Cancelled` without a request is `cancel_not_requested`) — so
a queued attempt that arrives after a cancel is dropped by the store itself, and a
cancel racing the run's completion has one outcome (docs/cancellation.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from mfm_dist.errors import StorageError
from mfm_dist.events import (
    FACT_RECORDED,
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
    is_cancel_request,
)


class GuardViolation(StorageError):
    """A batch that would break the attempt-envelope rules; nothing was appended."""

    variant = "Concurrency"

    def __init__(self, rule: str, message: str, *, seq: int | None = None) -> None:
        super().__init__(
            "envelope_guard_violation",
            message,
            details={"rule": rule, "seq": seq},
        )
        self.rule = rule


class GuardView(Protocol):
    """What the guard needs to know about a run's history so far."""

    def started(self) -> bool: ...
    def completed(self) -> bool: ...
    def open_attempt(self, state_id: str) -> int | None: ...
    def next_attempt(self, state_id: str) -> int: ...
    def open_count(self) -> int: ...
    def state_completed(self, state_id: str) -> bool: ...
    def fact_binding(self, key: str) -> str | None: ...
    def cancel_requested(self) -> bool: ...


@dataclass
class GuardChanges:
    """The effect of an accepted batch, for the store to persist with the events."""

    started: bool = False
    completed: bool = False
    completed_status: str | None = None
    open_after: dict[str, int | None] = field(default_factory=dict)  # state -> open attempt
    next_after: dict[str, int] = field(default_factory=dict)  # state -> next attempt number
    completed_states: set[str] = field(default_factory=set)  # states completed by this batch
    facts: dict[str, str] = field(default_factory=dict)  # new bindings: key -> payload id
    cancel_requested: bool = False  # this batch records the run's cancel request


_RC_CANCEL_MESSAGES = {
    "run_cancel_requested": "a run whose cancel was requested can only end Cancelled",
    "cancel_not_requested": "a run ends Cancelled only after its cancel request",
}
FACT_MALFORMED_MESSAGE = "fact_recorded payload must be {key, payload_id, meta}"
FACT_CONFLICT_MESSAGE = "fact key is already bound to a different payload"
_ARTIFACT_ID = re.compile(r"[0-9a-f]{64}")
_FACT_FIELDS = frozenset({"key", "payload_id", "meta"})


def fact_binding_of(event: DomainEvent) -> tuple[str, str] | None:
    """(key, payload_id) of a well-formed `fact_recorded` payload, else None.

    Well-formed means the shape of `io.base.FactRecordedPayload`: an inline object
    with a string `key`, an artifact-id `payload_id`, an optional object `meta`
    and nothing else. The Redis store classifies events with this same function,
    so both guard implementations agree on what is malformed.
    """
    payload = event.payload
    if event.payload_ref is not None or not isinstance(payload, dict):
        return None
    key, payload_id = payload.get("key"), payload.get("payload_id")
    if (
        not isinstance(key, str)
        or not isinstance(payload_id, str)
        or _ARTIFACT_ID.fullmatch(payload_id) is None
        or not isinstance(payload.get("meta", {}), dict)
        or not _FACT_FIELDS.issuperset(payload)
    ):
        return None
    return key, payload_id


def check_batch(view: GuardView, envelopes: list[EventEnvelope]) -> GuardChanges:
    """Validate a batch against `view`; raise `GuardViolation` on the first broken rule."""
    changes = GuardChanges()
    started = view.started()
    completed = view.completed()
    cancelled = view.cancel_requested()
    open_now: dict[str, int | None] = {}
    next_now: dict[str, int] = {}
    done_now: dict[str, bool] = {}
    facts_now: dict[str, str | None] = {}
    open_delta = 0

    def open_of(state: str) -> int | None:
        if state not in open_now:
            open_now[state] = view.open_attempt(state)
        return open_now[state]

    def next_of(state: str) -> int:
        if state not in next_now:
            next_now[state] = view.next_attempt(state)
        return next_now[state]

    def done_of(state: str) -> bool:
        if state not in done_now:
            done_now[state] = view.state_completed(state)
        return done_now[state]

    def fact_of(key: str) -> str | None:
        if key not in facts_now:
            facts_now[key] = view.fact_binding(key)
        return facts_now[key]

    for env in envelopes:
        ev = env.event
        if completed:
            raise GuardViolation("after_run_completed", "run already completed", seq=env.seq)
        if isinstance(ev, RunStarted):
            if started or env.seq != 1:
                raise GuardViolation(
                    "run_started_not_first", "RunStarted only at head 0", seq=env.seq
                )
            _check_run_level(env)
            started = True
            changes.started = True
            continue
        if not started:
            raise GuardViolation("run_not_started", "first event must be RunStarted", seq=env.seq)
        if isinstance(ev, StateEntered):
            state = str(ev.state_id)
            if cancelled:
                raise GuardViolation(
                    "run_cancel_requested", "the run's cancellation was requested", seq=env.seq
                )
            if open_of(state) is not None:
                raise GuardViolation(
                    "attempt_already_open", f"{state} already has an open attempt", seq=env.seq
                )
            if done_of(state):
                raise GuardViolation(
                    "state_already_completed", f"{state} already completed", seq=env.seq
                )
            if ev.attempt != next_of(state):
                raise GuardViolation(
                    "attempt_out_of_order",
                    f"{state} attempt {ev.attempt} is not the next ({next_of(state)})",
                    seq=env.seq,
                )
            _check_attribution(env, state, ev.attempt)
            open_now[state] = ev.attempt
            changes.open_after[state] = ev.attempt
            open_delta += 1
        elif isinstance(ev, (StateCompleted, StateFailed)):
            state = str(ev.state_id)
            attempt = open_of(state)
            if attempt is None:
                raise GuardViolation(
                    "terminal_without_open_attempt", f"{state} has no open attempt", seq=env.seq
                )
            _check_attribution(env, state, attempt)
            open_now[state] = None
            next_now[state] = attempt + 1
            changes.open_after[state] = None
            changes.next_after[state] = attempt + 1
            if isinstance(ev, StateCompleted):
                done_now[state] = True
                changes.completed_states.add(state)
            open_delta -= 1
        elif isinstance(ev, RunCompleted):
            _check_run_level(env)
            if view.open_count() + open_delta > 0:
                raise GuardViolation(
                    "run_completed_with_open_attempt", "an attempt is still open", seq=env.seq
                )
            if cancelled != (ev.status == RunStatus.CANCELLED):
                rule = "run_cancel_requested" if cancelled else "cancel_not_requested"
                raise GuardViolation(rule, _RC_CANCEL_MESSAGES[rule], seq=env.seq)
            completed = True
            changes.completed = True
            changes.completed_status = ev.status.value
        elif isinstance(ev, DomainEvent):
            if env.state_id is None and env.attempt is not None:
                raise GuardViolation(
                    "envelope_attribution_mismatch", _ATTEMPT_WITHOUT_STATE, seq=env.seq
                )
            if env.state_id is not None and (
                env.attempt is None or open_of(str(env.state_id)) != env.attempt
            ):
                raise GuardViolation(
                    "domain_event_outside_attempt",
                    f"no open attempt {env.attempt} of {env.state_id}",
                    seq=env.seq,
                )
            if is_cancel_request(ev, env.state_id):
                if cancelled:
                    raise GuardViolation(
                        "cancel_already_requested", "cancellation already requested", seq=env.seq
                    )
                cancelled = True
                changes.cancel_requested = True
            elif ev.name == FACT_RECORDED:
                binding = fact_binding_of(ev)
                if binding is None:
                    raise GuardViolation("fact_malformed", FACT_MALFORMED_MESSAGE, seq=env.seq)
                key, payload_id = binding
                bound = fact_of(key)
                if bound is None:
                    facts_now[key] = payload_id
                    changes.facts[key] = payload_id
                elif bound != payload_id:
                    raise GuardViolation("fact_conflict", FACT_CONFLICT_MESSAGE, seq=env.seq)
    return changes


_RUN_LEVEL_ATTRIBUTED = "run-level events carry no state_id/attempt"
_ATTEMPT_WITHOUT_STATE = "envelope names an attempt but no state_id"


def _check_run_level(env: EventEnvelope) -> None:
    """`RunStarted` and `RunCompleted` belong to no attempt (docs/events.md#envelopes)."""
    if env.state_id is not None or env.attempt is not None:
        raise GuardViolation("envelope_attribution_mismatch", _RUN_LEVEL_ATTRIBUTED, seq=env.seq)


def _check_attribution(env: EventEnvelope, state: str, attempt: int) -> None:
    """Attempt events carry their state and attempt in the envelope (docs/events.md#envelopes)."""
    if str(env.state_id) != state or env.attempt != attempt:
        raise GuardViolation(
            "envelope_attribution_mismatch",
            "envelope state_id/attempt disagree with the event",
            seq=env.seq,
        )


@dataclass
class DictGuardView:
    """An in-memory guard view (memory store, history rebuilds)."""

    is_started: bool = False
    is_completed: bool = False
    open: dict[str, int] = field(default_factory=dict)
    next: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    facts: dict[str, str] = field(default_factory=dict)
    is_cancel_requested: bool = False

    def started(self) -> bool:
        return self.is_started

    def completed(self) -> bool:
        return self.is_completed

    def open_attempt(self, state_id: str) -> int | None:
        return self.open.get(state_id)

    def next_attempt(self, state_id: str) -> int:
        return self.next.get(state_id, 0)

    def open_count(self) -> int:
        return len(self.open)

    def state_completed(self, state_id: str) -> bool:
        return state_id in self.done

    def fact_binding(self, key: str) -> str | None:
        return self.facts.get(key)

    def cancel_requested(self) -> bool:
        return self.is_cancel_requested

    def apply(self, changes: GuardChanges) -> None:
        self.is_started = self.is_started or changes.started
        self.is_completed = self.is_completed or changes.completed
        self.is_cancel_requested = self.is_cancel_requested or changes.cancel_requested
        for state, attempt in changes.open_after.items():
            if attempt is None:
                self.open.pop(state, None)
            else:
                self.open[state] = attempt
        self.next.update(changes.next_after)
        self.done.update(changes.completed_states)
        for key, payload_id in changes.facts.items():
            self.facts.setdefault(key, payload_id)
