"""The backfill timer a tick leaves behind (`workers.backfills.tick`), when something
happens *during* the tick: the CLI's `retry`, `resume` (or `create`, `cancel`) records its
change and then makes the timer due (`arm`); the tick, which read the journal before that
record, must not overwrite that wake-up with its own, older view — nor may a tick that lost
its lock to another control worker overwrite the timer the new holder set.

Deterministic: the tick runs in this process against a real Redis (the worker harness, with
a recording dispatcher; the runs are driven by the test), and the "concurrent" command is
done from inside the driver's step, right after the step read the journal."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mfm_dist.backfill.driver import BackfillDriver, StepOutcome
from mfm_dist.backfill.model import BackfillPlan, Partition, Paused, Resumed
from mfm_dist.backfill.planner import (
    CreateRequest,
    append_records,
    create,
    load_state,
    retry_failed,
)
from mfm_dist.backfill.state import BackfillState, Phase
from mfm_dist.config import RunConfig
from mfm_dist.stores.redis_keys import BACKFILL_TIMERS_KEY, LOCK, run_key
from support.worker_harness import Harness
from workers.backfills import IDLE_S, arm, lock_name, scheduled, tick
from workers.leases import Coordination

OP = "partition_demo"


@pytest.fixture
def no_inline(env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition runs are woken through the recording dispatcher (the test drives them)."""
    monkeypatch.setenv("MFM_INLINE_COORDINATION", "0")


@pytest.fixture
def hb(no_inline: None, h: Harness) -> Iterator[Harness]:
    yield h


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _create(h: Harness, name: str, values: list[str], max_active: int = 4) -> BackfillPlan:
    request = CreateRequest(
        name=name,
        op=OP,
        version=None,
        config=RunConfig(),
        field="day",
        source="list",
        partitions=[Partition(value=v, input={"day": v}) for v in values],
        max_active=max_active,
        backend="cluster",
    )
    result = create(h.rt.events, h.rt.artifacts, h.rt.registry, request)
    arm(h.rt.redis, name)  # what `mfm backfill create … --backend celery` does next
    return result.plan


def _drive_runs(h: Harness, plan: BackfillPlan) -> None:
    for i in range(len(plan.partitions)):
        h.drive(plan.run_id(i, 0))


def _during_step(monkeypatch: pytest.MonkeyPatch, when: str, action: object) -> list[StepOutcome]:
    """Run `action()` once, right after a driver step that returns status `when`."""
    real = BackfillDriver.step
    seen: list[StepOutcome] = []

    def step(self: BackfillDriver) -> StepOutcome:
        outcome = real(self)
        if outcome.status == when and not seen:
            seen.append(outcome)
            action()  # type: ignore[operator]
        return outcome

    monkeypatch.setattr(BackfillDriver, "step", step)
    return seen


def test_a_retry_recorded_while_the_tick_finishes_keeps_its_timer(
    hb: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, name = hb, "retry-race"
    plan = _create(h, name, ["a", "b"])
    assert tick(h.rt, name) == "running"  # claims both partitions and starts their runs
    _drive_runs(h, plan)

    def retry() -> None:  # `mfm backfill retry NAME --failed`: a new issue, then `arm`
        retry_failed(h.rt.events, h.rt.artifacts, h.rt.registry, name)
        arm(h.rt.redis, name)

    seen = _during_step(monkeypatch, "finished", retry)
    assert tick(h.rt, name) == "finished"
    assert seen, "the step that finished issue 1 ran"
    state = load_state(h.rt.events, name)
    assert state.issue is not None and state.issue.issue == 2 and state.finished is None
    # The new issue must be driven: its timer survives the tick that ended issue 1.
    due = scheduled(h.rt.redis, name)
    assert due is not None, "the re-issued backfill was left without a timer"
    assert due <= _now_ms()
    assert tick(h.rt, name) == "finished"
    state = load_state(h.rt.events, name)
    assert state.phase is Phase.COMPLETED and state.counts()["completed"] == 2
    assert scheduled(h.rt.redis, name) is None


def test_a_resume_recorded_while_the_tick_goes_idle_is_not_postponed(
    hb: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, name = hb, "resume-race"
    plan = _create(h, name, ["a", "b", "c"], max_active=1)
    # One partition claimed, then paused: the next tick settles it and, paused with
    # nothing running, would look again only in IDLE_S.
    assert tick(h.rt, name) == "running"
    append_records(h.rt.events, name, lambda s: [Paused(by="test")])
    h.drive(plan.run_id(0, 0))

    def resume() -> None:  # `mfm backfill resume NAME`: record it, then `arm`
        append_records(h.rt.events, name, lambda s: [Resumed(by="test")])
        arm(h.rt.redis, name)

    seen = _during_step(monkeypatch, "paused", resume)
    assert tick(h.rt, name) == "paused"
    assert seen and seen[0].wake_s is None  # the step saw a paused backfill, nothing running
    due = scheduled(h.rt.redis, name)
    assert due is not None
    assert due <= _now_ms(), f"the resume's wake-up was postponed by {due - _now_ms()} ms"
    assert due < _now_ms() + IDLE_S * 1000 / 2


def test_a_tick_that_lost_its_lock_leaves_the_new_holders_timer(
    hb: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, name = hb, "lock-lost"
    _create(h, name, ["a", "b"])
    coord = Coordination(h.rt.redis)
    theirs: list[int] = []

    def taken_over() -> None:
        # This tick's lock expired (a slow step) and another control worker took it and
        # set the timer it needs; then a `pause` lands, so this tick's step looks again.
        h.rt.redis.delete(run_key(lock_name(name), LOCK))
        assert coord.try_lock(lock_name(name), 10_000) is not None
        theirs.append(_now_ms() + 250)
        h.rt.redis.zadd(BACKFILL_TIMERS_KEY, {name: theirs[0]})
        append_records(h.rt.events, name, lambda s: [Paused(by="test")])

    real_append = BackfillDriver._append
    fired: list[bool] = []

    def append(self: BackfillDriver, state: BackfillState, records: list[object]) -> bool:
        if records and not fired:
            fired.append(True)
            taken_over()
        return real_append(self, state, records)  # type: ignore[arg-type]

    monkeypatch.setattr(BackfillDriver, "_append", append)
    assert tick(h.rt, name) == "lock_lost"
    assert fired
    assert scheduled(h.rt.redis, name) == theirs[0]
