"""Typed outcomes of a coordinator step and an attempt (`workers.outcomes`): values inside the
code, one wire form as Celery task results — the strings earlier versions returned, so
readers of task results see no change (docs/cluster.md#task-results)."""

from __future__ import annotations

import json

import pytest

from support.worker_harness import Harness
from workers import tasks
from workers.outcomes import AttemptKind, AttemptOutcome, StepKind, StepOutcome

STEP_WIRE = [
    (StepOutcome.BUSY, "busy"),
    (StepOutcome.JOINED, "joined"),
    (StepOutcome.HANDED_OVER, "handed_over"),
    (StepOutcome.dispatched(3), "dispatched:3"),
    (StepOutcome.WAITING, "waiting"),
    (StepOutcome.IDLE, "idle"),
    (StepOutcome.NOTIFYING, "notifying"),
    (StepOutcome.FINISHED, "finished"),
    (StepOutcome.finish_rejected("open_attempt_exists"), "finish_rejected:open_attempt_exists"),
    (StepOutcome.CANCELLING, "cancelling"),
    (StepOutcome.CANCELLED, "cancelled"),
    (StepOutcome.aborted("plan_mismatch"), "aborted:plan_mismatch"),
    (StepOutcome.unrecoverable("event_decode_failed"), "unrecoverable:event_decode_failed"),
    (StepOutcome.LOCK_LOST, "lock_lost"),
    (StepOutcome.retry("ConnectionError"), "retry:ConnectionError"),
    (StepOutcome.error("run_not_found"), "error:run_not_found"),
    (StepOutcome.error(), "error"),
]
ATTEMPT_WIRE = [
    (AttemptOutcome.COMPLETED, "completed"),
    (AttemptOutcome.SKIPPED, "skipped"),
    (AttemptOutcome.failed("upstream_unavailable"), "failed:upstream_unavailable"),
    (AttemptOutcome.DUPLICATE, "duplicate"),
    (AttemptOutcome.SUPERSEDED, "superseded"),
    (AttemptOutcome.CANCELLED, "cancelled"),
    (AttemptOutcome.PLAN_MISMATCH, "plan_mismatch"),
    (AttemptOutcome.error("artifact_not_found"), "error:artifact_not_found"),
]


@pytest.mark.parametrize(("outcome", "wire"), STEP_WIRE, ids=[w for _, w in STEP_WIRE])
def test_step_outcomes_keep_their_wire_form(outcome: StepOutcome, wire: str) -> None:
    assert outcome.wire() == str(outcome) == wire
    assert StepOutcome.from_wire(wire) == outcome
    assert json.loads(json.dumps(outcome.wire())) == wire  # a JSON-serialisable task result
    assert outcome.kind.value == wire.split(":", 1)[0]  # the metrics label


@pytest.mark.parametrize(("outcome", "wire"), ATTEMPT_WIRE, ids=[w for _, w in ATTEMPT_WIRE])
def test_attempt_outcomes_keep_their_wire_form(outcome: AttemptOutcome, wire: str) -> None:
    assert outcome.wire() == str(outcome) == wire
    assert AttemptOutcome.from_wire(wire) == outcome
    assert outcome.kind.value == wire.split(":", 1)[0]


def test_every_kind_has_a_wire_form() -> None:
    assert {o.kind for o, _ in STEP_WIRE} | {StepKind.RUN_NOT_FOUND} == set(StepKind)
    assert {o.kind for o, _ in ATTEMPT_WIRE} == set(AttemptKind)


def test_outcomes_are_values() -> None:
    assert StepOutcome.dispatched(2) == StepOutcome.dispatched(2) != StepOutcome.dispatched(3)
    assert StepOutcome(StepKind.WAITING) == StepOutcome.WAITING
    assert len({AttemptOutcome.failed("a"), AttemptOutcome.failed("a")}) == 1
    attempt_cancelled: object = AttemptOutcome.CANCELLED
    assert attempt_cancelled != StepOutcome.CANCELLED  # the same word, different things
    with pytest.raises(AttributeError):
        StepOutcome.WAITING.kind = StepKind.IDLE  # type: ignore[misc]


def test_closed_attempts_are_those_the_log_shows_ended() -> None:
    closed = {o.kind for o, _ in ATTEMPT_WIRE if o.closed}
    assert closed == {AttemptKind.COMPLETED, AttemptKind.SKIPPED, AttemptKind.FAILED}


@pytest.mark.parametrize(
    "make",
    [
        lambda: StepOutcome(StepKind.DISPATCHED),  # a count is required
        lambda: StepOutcome.dispatched(0),  # none sent is `waiting`
        lambda: StepOutcome(StepKind.WAITING, sent=1),
        lambda: StepOutcome(StepKind.ABORTED),  # a code is required
        lambda: StepOutcome(StepKind.FINISHED, "x"),  # no code here
        lambda: StepOutcome.error(""),
        lambda: AttemptOutcome(AttemptKind.FAILED),
        lambda: AttemptOutcome(AttemptKind.COMPLETED, "x"),
    ],
)
def test_malformed_outcomes_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("wire", ["dispatched", "dispatched:x", "nonsense", "aborted", ""])
def test_unknown_wire_forms_are_refused(wire: str) -> None:
    with pytest.raises(ValueError):
        StepOutcome.from_wire(wire)


def test_a_celery_task_result_is_the_wire_form(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mfm.advance` and `mfm.execute_attempt` return strings (JSON results); the typed
    outcome is what the coordinator and the attempt code return inside the process."""
    monkeypatch.setattr(tasks, "coordinator", lambda: h.coordinator)
    rid = h.submit("chain_demo", {"states": 1})
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (task,) = h.dispatcher.take()
    ran = h.run(task)
    assert ran == AttemptOutcome.COMPLETED and ran.closed
    assert tasks.advance.run(rid) == "finished"  # the registered task body: its wire form
