"""Bounded recovery, scenario by scenario, in process: the real coordinator and attempt code
against a real redis-server, with the faults placed exactly (docs: distributed liveness).

Each test names the bound it checks. Before these fixes each scenario waited for something
outside our settings: the dispatch timeout (60 s), the coordinator lock TTL (30 s) or the
broker's visibility timeout (1 h)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from mfm_dist.config import Duration, FixedBackoff, RetryPolicy, RunConfig
from mfm_dist.engine.attempt import now_millis
from mfm_dist.events import EventDraft, StateEntered, StateFailed
from mfm_dist.ids import RunId, StateId
from mfm_dist.stores.redis_keys import lease_key, run_key
from support.worker_harness import Harness, completed_status
from workers import leases
from workers.leases import CLAIMED, DELAYED
from workers.outcomes import AttemptOutcome, StepOutcome


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def take_lease_as(
    h: Harness, monkeypatch: pytest.MonkeyPatch, holder: str, rid: str, sid: str, attempt: int
) -> str:
    """Take the attempt's lease the way a worker does, in the name of `holder`."""
    with monkeypatch.context() as m:
        m.setattr(leases, "holder_id", lambda: holder)
        value = h.rt.coord.acquire_lease(rid, sid, attempt, h.rt.settings.lease_ttl_ms)
    assert value is not None
    return value


def test_attempt_lost_after_taking_its_lease_is_redispatched_at_lease_expiry(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound: one lease TTL (was: the 60 s dispatch timeout)."""
    rid = h.submit("chain_demo", {"states": 2})
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (task,) = h.dispatcher.take()
    # A worker on another host takes the lease, then its machine dies before StateEntered.
    take_lease_as(h, monkeypatch, "far-away-host:4242", rid, task.state_id, 0)
    died = time.monotonic()
    assert h.rt.coord.reservations(rid)[task.state_id].kind == CLAIMED
    # Its lease still runs: not sent again yet.
    assert h.coordinator.advance(rid) == StepOutcome.WAITING
    assert h.dispatcher.take() == []
    while h.rt.redis.exists(lease_key(rid, task.state_id)):
        time.sleep(0.02)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    recovered = time.monotonic() - died
    (again,) = h.dispatcher.take()
    assert (again.state_id, again.attempt) == (task.state_id, 0)
    assert recovered < h.rt.settings.lease_ttl_s + 1.0
    assert h.run(again) == AttemptOutcome.COMPLETED
    h.drive(rid)
    assert completed_status(h, rid) == "Completed"


def test_redelivered_attempt_takes_over_a_dead_local_holders_lease_at_once(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound: none — the redelivered copy runs at once (was: `duplicate`, then 60 s)."""
    rid = h.submit("chain_demo", {"states": 1})
    h.coordinator.advance(rid)
    (task,) = h.dispatcher.take()
    take_lease_as(h, monkeypatch, f"{socket.gethostname()}:{dead_pid()}", rid, task.state_id, 0)
    assert h.run(task) == AttemptOutcome.COMPLETED  # the pool child that held it was SIGKILLed
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    assert completed_status(h, rid) == "Completed"


def test_a_live_holders_lease_is_never_taken_over(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("chain_demo", {"states": 1})
    h.coordinator.advance(rid)
    (task,) = h.dispatcher.take()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        holder = f"{socket.gethostname()}:{sleeper.pid}"
        take_lease_as(h, monkeypatch, holder, rid, task.state_id, 0)
        assert h.run(task) == AttemptOutcome.DUPLICATE
    finally:
        sleeper.kill()
        sleeper.wait()


def test_open_attempt_of_a_dead_local_holder_is_closed_without_waiting_for_its_ttl(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound: the next coordinator look (was: one lease TTL)."""
    rid = h.submit("chain_demo", {"states": 1})
    h.coordinator.advance(rid)
    (task,) = h.dispatcher.take()
    take_lease_as(h, monkeypatch, f"{socket.gethostname()}:{dead_pid()}", rid, task.state_id, 0)
    sid = StateId(task.state_id)
    entered = StateEntered(state_id=sid, attempt=0, base_snapshot_id=task.base_snapshot_id)
    h.rt.events.append_next(
        RunId(rid), [EventDraft(event=entered, ts_millis=now_millis(), state_id=sid, attempt=0)]
    )
    assert h.rt.redis.pttl(lease_key(rid, task.state_id)) > 0  # the key itself still lives
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (retry,) = h.dispatcher.take()
    assert retry.attempt == 1
    orphan = [e.event for e in h.log(rid) if isinstance(e.event, StateFailed)]
    assert [f.error.code for f in orphan] == ["orphan_attempt_recovered"]


def test_unclaimed_dispatch_is_resent_after_one_lease_ttl_once_the_queue_is_empty(
    h: Harness,
) -> None:
    """A message lost by the broker (or by a worker killed while holding it). Bound: one
    lease TTL while the attempt queue is empty (was: the 60 s dispatch timeout)."""
    rid = h.submit("chain_demo", {"states": 1})
    h.coordinator.advance(rid)
    (lost,) = h.dispatcher.take()
    assert h.coordinator.advance(rid) == StepOutcome.WAITING
    time.sleep(h.rt.settings.lease_ttl_s + 0.1)
    h.dispatcher.queue_depth = 3  # it may still be queued behind others: leave it
    assert h.coordinator.advance(rid) == StepOutcome.WAITING
    h.dispatcher.queue_depth = 0
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (again,) = h.dispatcher.take()
    assert (again.state_id, again.attempt) == (lost.state_id, lost.attempt)
    # The lost original may still turn up: it finds the attempt done and changes nothing.
    assert h.run(again) == AttemptOutcome.COMPLETED
    assert h.run(lost) == AttemptOutcome.DUPLICATE
    h.drive(rid)
    assert completed_status(h, rid) == "Completed"


def test_coordinator_dying_between_reserving_and_sending_is_noticed_by_the_next_look(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bound: the next coordinator look (was: the 60 s dispatch timeout)."""
    rid = h.submit("chain_demo", {"states": 1})

    def crash(run_id: str, attempts: Any) -> None:
        raise SystemExit("the control worker died mid-send")

    monkeypatch.setattr(h.dispatcher, "send_chord", crash)
    with pytest.raises(SystemExit):
        h.coordinator.advance(rid)
    monkeypatch.undo()
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)


def test_dead_coordinators_lock_is_taken_over_at_once(h: Harness) -> None:
    """Bound: none on this host (was: the 30 s lock TTL)."""
    rid = h.submit("chain_demo", {"states": 1})
    h.rt.redis.set(run_key(rid, "lock"), f"tok:{socket.gethostname()}:{dead_pid()}", px=30_000)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)


def test_busy_lock_marks_the_run_dirty_and_the_holder_looks_again(h: Harness) -> None:
    """No spinning re-enqueue while another coordinator works; no lost wake-up either."""
    rid = h.submit("chain_demo", {"states": 1})
    other = "tok:far-away-host:77"
    h.rt.redis.set(run_key(rid, "lock"), other, px=30_000)
    assert h.coordinator.advance(rid) == StepOutcome.BUSY
    assert h.dispatcher.advances == [] and h.dispatcher.chords == []
    assert h.rt.redis.exists(run_key(rid, "dirty"))
    # The holder lets go and learns that someone knocked: it sends one more advance.
    assert h.rt.coord.unlock(rid, other) == 1
    assert not h.rt.redis.exists(run_key(rid, "dirty"))
    # A holder that sees the mark while it still holds the lock looks again itself.
    h.rt.coord.mark_dirty(rid, 30_000)
    assert h.coordinator.advance(rid) == StepOutcome.WAITING  # the status of its second look
    assert len(h.dispatcher.take()) == 1  # the first look dispatched, the second found it so
    assert not h.rt.redis.exists(run_key(rid, "dirty"))


def test_retry_backoff_waits_in_redis_not_in_a_countdown_message(h: Harness) -> None:
    """The retry is held as a delayed reservation, the run's timer is due when the backoff
    ends, and nothing is sent before: a broker restart cannot lose it."""
    config = RunConfig(
        retry_policy=RetryPolicy(
            max_attempts=2, backoff=FixedBackoff(delay=Duration.from_millis(600))
        )
    )
    rid = h.submit("backoff_demo", {}, config)
    h.coordinator.advance(rid)
    (first,) = h.dispatcher.take()
    assert h.run(first) == AttemptOutcome.failed("upstream_unavailable")
    failed_at = now_millis()
    assert h.coordinator.advance(rid) == StepOutcome.WAITING
    assert h.dispatcher.chords == []
    reservation = h.rt.coord.reservations(rid)[first.state_id]
    assert reservation.kind == DELAYED and reservation.attempt == 1
    due = h.rt.coord.scheduled(rid)
    assert due is not None and failed_at <= due <= failed_at + 700
    while now_millis() < due:
        time.sleep(0.02)
    assert h.coordinator.advance(rid) == StepOutcome.WAITING  # sent now, as its own chord
    (retry,) = h.dispatcher.take()
    assert retry.attempt == 1
    assert h.run(retry) == AttemptOutcome.COMPLETED
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    assert completed_status(h, rid) == "Completed"


def test_a_claim_made_while_the_chord_is_sent_is_not_overwritten(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast worker claims its attempt before the coordinator has marked the dispatch
    `sent`, then dies: the claim must survive (so the dead holder is noticed at the next
    look), not be overwritten by `sent` and wait for the dispatch timeout. Found by
    `scripts/soak.py` (510 of 4,168 claims overwritten)."""
    rid = h.submit("chain_demo", {"states": 1})
    h.dispatcher.queue_depth = 3  # messages are queued: the "lost message" shortcut is off
    real_send = h.dispatcher.send_chord
    dead = f"{socket.gethostname()}:{dead_pid()}"

    def send_and_claim(run_id: str, attempts: Any) -> None:
        real_send(run_id, attempts)
        for t in attempts:  # the worker took the lease, then its process was killed
            take_lease_as(h, monkeypatch, dead, run_id, t.state_id, t.attempt)

    monkeypatch.setattr(h.dispatcher, "send_chord", send_and_claim)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (task,) = h.dispatcher.take()
    assert h.rt.coord.reservations(rid)[task.state_id].kind == CLAIMED
    monkeypatch.setattr(h.dispatcher, "send_chord", real_send)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)  # at once, not after 60 s
    (again,) = h.dispatcher.take()
    assert (again.state_id, again.attempt) == (task.state_id, 0)
