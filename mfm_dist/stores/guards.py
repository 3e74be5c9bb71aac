"""Envelope guards (CONTRACT §6, §10) shared by the Python-side event stores.

A store checks each batch against its run's guard view before appending, inside
the same transaction, so a duplicate or late delivery can never corrupt a
history. The Redis backend enforces the same rules in its Lua script; the store
contract suite holds them to one behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mfm_dist.errors import StorageError
from mfm_dist.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
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


@dataclass
class GuardChanges:
    """The effect of an accepted batch, for the store to persist with the events."""

    started: bool = False
    completed: bool = False
    completed_status: str | None = None
    open_after: dict[str, int | None] = field(default_factory=dict)  # state -> open attempt
    next_after: dict[str, int] = field(default_factory=dict)  # state -> next attempt number


def check_batch(view: GuardView, envelopes: list[EventEnvelope]) -> GuardChanges:
    """Validate a batch against `view`; raise `GuardViolation` on the first broken rule."""
    changes = GuardChanges()
    started = view.started()
    completed = view.completed()
    open_now: dict[str, int | None] = {}
    next_now: dict[str, int] = {}
    open_delta = 0

    def open_of(state: str) -> int | None:
        if state not in open_now:
            open_now[state] = view.open_attempt(state)
        return open_now[state]

    def next_of(state: str) -> int:
        if state not in next_now:
            next_now[state] = view.next_attempt(state)
        return next_now[state]

    for env in envelopes:
        ev = env.event
        if completed:
            raise GuardViolation("after_run_completed", "run already completed", seq=env.seq)
        if isinstance(ev, RunStarted):
            if started or env.seq != 1:
                raise GuardViolation(
                    "run_started_not_first", "RunStarted only at head 0", seq=env.seq
                )
            started = True
            changes.started = True
            continue
        if not started:
            raise GuardViolation("run_not_started", "first event must be RunStarted", seq=env.seq)
        if isinstance(ev, StateEntered):
            state = str(ev.state_id)
            if open_of(state) is not None:
                raise GuardViolation(
                    "attempt_already_open", f"{state} already has an open attempt", seq=env.seq
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
            open_delta -= 1
        elif isinstance(ev, RunCompleted):
            if view.open_count() + open_delta > 0:
                raise GuardViolation(
                    "run_completed_with_open_attempt", "an attempt is still open", seq=env.seq
                )
            completed = True
            changes.completed = True
            changes.completed_status = ev.status.value
        elif (
            isinstance(ev, DomainEvent)
            and env.state_id is not None
            and open_of(str(env.state_id)) != env.attempt
        ):
            raise GuardViolation(
                "domain_event_outside_attempt",
                f"no open attempt {env.attempt} of {env.state_id}",
                seq=env.seq,
            )
    return changes


def _check_attribution(env: EventEnvelope, state: str, attempt: int) -> None:
    if env.state_id is not None and (str(env.state_id) != state or env.attempt != attempt):
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

    def apply(self, changes: GuardChanges) -> None:
        self.is_started = self.is_started or changes.started
        self.is_completed = self.is_completed or changes.completed
        for state, attempt in changes.open_after.items():
            if attempt is None:
                self.open.pop(state, None)
            else:
                self.open[state] = attempt
        self.next.update(changes.next_after)
