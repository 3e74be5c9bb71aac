"""Carried attempts (workers.carry, docs/distributed.md#carried-attempts): the worker whose
attempt closes its wave runs the single next attempt itself — one broker hop per chain step
instead of a chord, a join and a coordinator pass — within a time budget, and a carried
attempt its worker never ran is recovered like a lost message. In process, against a real
redis-server, with the real `execute_attempt` task body and a recording dispatcher."""

from __future__ import annotations

import time

import pytest

from mfm_dist.config import FanOutJoin, RunConfig
from support.worker_harness import Harness, completed_status
from workers import carry, inline, tasks
from workers.carry import CARRY_BUDGET_S, Carry, may_carry
from workers.coordinator import CARRY_ALLOWANCE_S
from workers.leases import SENT
from workers.messages import AttemptTask
from workers.outcomes import AttemptOutcome, StepOutcome


@pytest.fixture
def in_process(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Harness:
    """`tasks.execute_attempt` uses the harness's runtime and coordinator."""
    monkeypatch.setattr(tasks, "get_runtime", lambda: h.rt)
    monkeypatch.setattr(inline, "coordinator", lambda: h.coordinator)
    return h


def run_task(t: AttemptTask) -> str:
    status: str = tasks.execute_attempt(
        t.run_id, t.manifest_id, t.state_id, t.attempt, t.base_snapshot_id, t.plan_fingerprint
    )
    return status


def attempts_entered(h: Harness, rid: str) -> list[str]:
    return [str(e.state_id) for e in h.log(rid) if type(e.event).__name__ == "StateEntered"]


def test_a_chain_runs_to_its_end_in_one_task_without_a_chord(in_process: Harness) -> None:
    h = in_process
    rid = h.submit("chain_demo", {"states": 4})
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (first,) = h.dispatcher.take()
    assert run_task(first) == "completed"
    assert h.dispatcher.chords == []  # states 2..4 were carried, never sent
    assert len(attempts_entered(h, rid)) == 4
    assert completed_status(h, rid) == "Completed"


def test_a_wave_is_sent_and_only_its_single_join_is_carried(in_process: Harness) -> None:
    h = in_process
    config = RunConfig(execution_mode=FanOutJoin(max_concurrency=4))
    rid = h.submit("fanout_demo", {"items": 3}, config)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(3)
    wave = h.dispatcher.take()
    assert [run_task(t) for t in wave] == ["completed"] * 3
    assert h.dispatcher.chords == []  # the join followed the wave's last attempt
    assert attempts_entered(h, rid)[-1].endswith("join")
    assert completed_status(h, rid) == "Completed"


def test_past_its_budget_a_worker_sends_the_next_attempt(
    in_process: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = in_process
    monkeypatch.setattr(carry, "CARRY_BUDGET_S", 0.0)
    rid = h.submit("chain_demo", {"states": 2})
    h.coordinator.advance(rid)
    (first,) = h.dispatcher.take()
    assert run_task(first) == "completed"
    (sent,) = h.dispatcher.take()  # through the broker, as before
    assert (sent.state_id, sent.attempt) == ("chain_demo.main.step_0001", 0)


def test_a_carried_attempt_its_worker_never_ran_is_dispatched_again(h: Harness) -> None:
    """The carrier died between the step and taking the lease: the reservation is an
    ordinary `sent` one, given up one lease TTL later while the attempt queue is empty."""
    rid = h.submit("chain_demo", {"states": 1})
    offer = Carry(elapsed_s=0.0, hard_limit_s=None)
    assert h.coordinator.advance_inline(rid, offer) == StepOutcome.dispatched(1)
    assert offer.task is not None and h.dispatcher.chords == []
    assert h.rt.coord.reservations(rid)[offer.task.state_id].kind == SENT
    time.sleep(h.rt.settings.lease_ttl_s + 0.1)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (again,) = h.dispatcher.take()
    assert (again.state_id, again.attempt) == (offer.task.state_id, 0)
    assert h.run(again) == AttemptOutcome.COMPLETED
    h.drive(rid)
    assert completed_status(h, rid) == "Completed"


def _task(limit: float | None) -> AttemptTask:
    return AttemptTask("r", "m", "s", 0, "b", "f", 0, limit)


@pytest.mark.parametrize(
    ("elapsed", "hard", "limit", "allowed"),
    [
        (0.0, None, None, True),  # no limits anywhere: within the budget
        (CARRY_BUDGET_S, None, None, False),  # the budget is spent
        (1.0, 100.0, 95.0, True),  # ends (by its own timeout) before the hard limit
        (1.0, 100.0, 99.5, False),  # could outlive the task's hard limit
        (1.0, 100.0, None, False),  # unbounded attempt under a hard limit
    ],
)
def test_may_carry(elapsed: float, hard: float | None, limit: float | None, allowed: bool) -> None:
    assert may_carry(elapsed, hard, _task(limit)) is allowed


def test_the_hard_limit_leaves_room_for_the_budget() -> None:
    """An attempt's hard limit includes the carry allowance, so a chain of equal timeouts
    can be carried early in a task."""
    assert CARRY_BUDGET_S <= CARRY_ALLOWANCE_S
    timeout_plus_grace = 60.0
    hard = timeout_plus_grace + CARRY_ALLOWANCE_S
    assert may_carry(CARRY_ALLOWANCE_S - 0.5, hard, _task(hard)) is False
    assert may_carry(0.0, hard, _task(hard)) is True


def test_only_a_single_attempt_is_carried() -> None:
    offer = Carry(elapsed_s=0.0, hard_limit_s=None)
    assert not offer.take([_task(None), _task(None)])
    assert offer.take([_task(None)]) and offer.task is not None
    assert not offer.take([_task(None)])  # one per step

