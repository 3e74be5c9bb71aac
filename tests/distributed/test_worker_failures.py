"""The distributed workers' failure handling, in process: a real redis-server, a local
artifact directory, the real `Coordinator` and `execute_attempt`, and a dispatcher that
records what would be sent to Celery (tests run the attempts themselves)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from mfm_dist.config import RunConfig
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.progress import MAX_ORPHAN_RECOVERIES, ORPHAN_CODE
from mfm_dist.errors import StorageError, StorageUnavailable
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import RunId
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.stores.redis_keys import lease_key, run_key
from support import dist_ops
from support.worker_harness import (
    WAIT_S,
    FakeDispatcher,
    Harness,
    completed_status,
    wait_until,
)
from workers.coordinator import Coordinator
from workers.faults import is_permanent_storage_fault, is_transient
from workers.leases import Coordination, LeaseKeeper
from workers.messages import AttemptTask
from workers.outcomes import AttemptKind, AttemptOutcome, StepOutcome
from workers.runtime import FACT_CACHE_SIZE, Runtime
from workers.settings import ClusterSettings, with_redis_credentials
from workers.timers import arm_unscheduled, running_runs

# -- 1: permanent faults end the run instead of looping ------------------------------------------


def test_permanent_fault_inside_attempt_ends_run_after_the_orphan_cap(h: Harness) -> None:
    rid = h.submit("poison_demo", {})
    statuses = h.drive(rid)
    mismatch = AttemptOutcome.error("artifact_content_address_mismatch")
    assert statuses == [mismatch] * (MAX_ORPHAN_RECOVERIES + 1)
    failures = [e.event for e in h.log(rid) if isinstance(e.event, StateFailed)]
    assert [f.error.code for f in failures] == [ORPHAN_CODE] * (MAX_ORPHAN_RECOVERIES + 1)
    assert completed_status(h, rid) == "Failed"


def test_missing_base_snapshot_is_recorded_as_a_non_retryable_failure(h: Harness) -> None:
    rid = h.submit("chain_demo", {"states": 2})
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (task,) = h.dispatcher.take()
    worker = Harness(Runtime.from_env(), FakeDispatcher(), h.coordinator)  # another process
    worker.rt.artifacts.object_path(task.base_snapshot_id).unlink()  # type: ignore[attr-defined]
    try:
        status = worker.run(task)
    finally:
        worker.rt.close()
    assert status.kind is AttemptKind.FAILED
    entered, failed = (e.event for e in h.log(rid)[-2:])
    assert isinstance(entered, StateEntered) and isinstance(failed, StateFailed)
    assert failed.error.code == status.code
    assert failed.error.retryable is False and failed.failure_snapshot_id is None
    assert h.rt.coord.live_leases(rid, [task.state_id]) == {}
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    assert completed_status(h, rid) == "Failed"


def test_fault_classification() -> None:
    from mfm_dist.errors import Corruption, NotFound

    assert is_permanent_storage_fault(Corruption("x", "bad"))
    assert is_permanent_storage_fault(NotFound("gone"))
    assert not is_permanent_storage_fault(StorageUnavailable("down"))
    assert not is_permanent_storage_fault(StorageError("attempt_lease_lost", "lost"))
    assert not is_permanent_storage_fault(GuardViolation("seq", "raced"))
    assert is_transient(redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    assert is_transient(redis.exceptions.ResponseError("BUSY Redis is busy running a script"))
    assert not is_transient(ValueError("bug"))


# -- 2: fencing ---------------------------------------------------------------------------------


def test_superseded_worker_makes_no_further_transport_call(h: Harness) -> None:
    rid = h.submit("counted_calls", {})
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (task,) = h.dispatcher.take()
    key = lease_key(rid, task.state_id)

    def steal() -> None:  # the lease expired and another worker took the attempt over
        h.rt.redis.set(key, f"{task.attempt}:other-token:other-host:1", px=60_000)
        dist_ops.AFTER_CALL.clear()

    dist_ops.AFTER_CALL.append(steal)
    assert h.run(task) == AttemptOutcome.SUPERSEDED
    assert dist_ops.COUNTED == [{"n": 0}]  # the second call never reached the transport
    assert not any(isinstance(e.event, StateCompleted) for e in h.log(rid))
    h.rt.redis.delete(key)  # the other worker died too: the coordinator recovers
    h.drive(rid)
    # Call 0 returned after the lease was lost, so its fact was not bound (the fence
    # refused): the next attempt repeats it with the same idempotency key. Call 1, which
    # the superseded worker would have made after losing the lease, happens once.
    assert dist_ops.COUNTED == [{"n": 0}, {"n": 0}, {"n": 1}]
    assert sum(isinstance(e.event, StateCompleted) for e in h.log(rid)) == 1
    assert completed_status(h, rid) == "Completed"


class _FlakyCoordination(Coordination):
    """Renewals fail (a partition) or block on demand."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.partitioned = False
        self.blocked: dict[str, threading.Event] = {}
        self.entered = threading.Event()

    def renew_lease(self, key: str, value: str, ttl_ms: int) -> bool:
        if self.partitioned:
            raise redis.ConnectionError("partition")
        gate = self.blocked.get(value)
        if gate is not None:
            self.entered.set()
            gate.wait(WAIT_S)
            return False
        return super().renew_lease(key, value, ttl_ms)


def test_renewals_failing_for_half_a_ttl_mark_the_lease_lost(h: Harness) -> None:
    coord = _FlakyCoordination(h.rt.redis)
    keeper = LeaseKeeper(coord, 300)
    value = coord.acquire_lease("r1", "s", 0, 300)
    assert value is not None
    keeper.hold("r1", "s", value)
    keeper.fence("r1", "s", value)  # held: no error
    coord.partitioned = True
    wait_until(lambda: keeper.is_lost(value), "the lease to be marked lost")
    coord.partitioned = False
    with pytest.raises(StorageError) as err:
        keeper.fence("r1", "s", value)
    assert err.value.info.code == "attempt_lease_lost"
    assert keeper.drop("r1", "s", value) is False


def test_stale_renewal_does_not_mark_a_re_hold_lost(h: Harness) -> None:
    coord = _FlakyCoordination(h.rt.redis)
    keeper = LeaseKeeper(coord, 300)
    old = "0:old-token:me"
    coord.blocked[old] = gate = threading.Event()
    keeper.hold("r2", "s", old)
    assert coord.entered.wait(WAIT_S)  # the renewer is mid-renewal of the old value
    keeper.drop("r2", "s", old)
    new = coord.acquire_lease("r2", "s", 1, 300)
    assert new is not None
    keeper.hold("r2", "s", new)
    gate.set()  # the stale renewal answers "not ours"
    wait_until(lambda: h.rt.redis.pttl(lease_key("r2", "s")) > 0, "renewals")
    keeper.fence("r2", "s", new)  # still ours
    assert keeper.drop("r2", "s", new) is True


# -- 3: the coordinator cache never runs ahead of the log ----------------------------------------


def test_cache_is_rebuilt_when_redis_loses_the_tail_of_the_log(h: Harness) -> None:
    rid = h.submit("chain_demo", {"states": 3})
    h.coordinator.advance(rid)
    (first,) = h.dispatcher.take()
    assert h.run(first) == AttemptOutcome.COMPLETED
    assert [t.state_id for t in (h.coordinator.advance(rid), h.dispatcher.take())[1]] == [
        first.state_id.replace("0000", "0001")
    ]
    # Redis restarts from an AOF that lacks the last second: StateCompleted is gone.
    r: Any = h.rt.redis
    tag = f"mfm:{{{rid}}}:"
    last = r.xrevrange(tag + "events", count=1)[0][0]
    r.xdel(tag + "events", last)
    guard = tag + "guard"
    head = int(r.hget(guard, "head")) - 1
    r.hset(
        guard,
        mapping={
            "head": head,
            "open_count": 1,
            f"open:{first.state_id}": 0,
            f"next:{first.state_id}": 0,
        },
    )
    r.hdel(guard, f"done:{first.state_id}")
    r.execute_command("XSETID", tag + "events", f"{head}-1")
    r.hset(tag + "meta", "head", head)
    r.delete(tag + "reserved", lease_key(rid, first.state_id))
    h.coordinator.advance(rid)
    (again,) = h.dispatcher.take()
    assert (again.state_id, again.attempt) == (first.state_id, 1)  # not step_0001
    assert h.run(again) == AttemptOutcome.COMPLETED
    h.drive(rid)
    assert completed_status(h, rid) == "Completed"


# -- 4: Redis OOM is transient and never ends the liveness chain ---------------------------------


def test_oom_append_is_transient_and_a_failed_advance_keeps_the_timer(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("chain_demo", {"states": 2})
    r = h.rt.redis
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        with pytest.raises(StorageError) as err:
            h.rt.events.append_next(
                RunId(rid), [EventDraft(event=DomainEvent(name="x", payload=None), ts_millis=1)]
            )
        assert err.value.info.code == "redis_server_busy" and err.value.info.retryable
        assert is_transient(err.value)
        with pytest.raises(Exception) as raised:
            h.coordinator.advance(rid)
        assert is_transient(raised.value)
    finally:
        r.config_set("maxmemory", 0)
    # A transient fault mid-advance (S3 down while loading): the timer is set anyway.
    h.rt.coord.forget_run(rid)

    def down(*_: Any, **__: Any) -> Any:
        raise StorageUnavailable("s3 down")

    monkeypatch.setattr(h.rt, "run_context", down)
    h.rt.coord.unschedule(rid)
    with pytest.raises(StorageUnavailable):
        h.coordinator.advance(rid)
    due = h.rt.coord.scheduled(rid)  # a transient fault: the run is looked at again soon
    assert due is not None and due - now_millis() <= 1500


def test_permanent_advance_failure_ends_the_run_with_its_code(h: Harness) -> None:
    from mfm_dist.engine.history import RunHistory
    from mfm_dist.engine.lifecycle import result_from_history

    rid = h.submit("chain_demo", {"states": 2})
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    (task,) = h.dispatcher.take()
    h.rt.events.append_next(  # an attempt is open when the coordinator gives up
        RunId(rid),
        [
            EventDraft(
                event=StateEntered(
                    state_id=task.state_id, attempt=0, base_snapshot_id=task.base_snapshot_id
                ),
                ts_millis=1,
                state_id=task.state_id,
                attempt=0,
            )
        ],
    )
    h.rt.coord.record_plan(rid, "f" * 64)  # the run was submitted with other code …
    newly_deployed = Coordinator(h.rt, h.dispatcher)  # … than this coordinator's
    assert newly_deployed.advance(rid) == StepOutcome.aborted("plan_mismatch")
    newly_deployed.close()
    history = RunHistory.load(h.rt.events, RunId(rid))
    result = result_from_history(history)
    assert result.phase.value == "Failed" and result.error is not None
    assert result.error.code == "plan_mismatch" and not result.error.retryable
    closed = history.envelopes[-3].event
    assert isinstance(closed, StateFailed) and closed.error.code == "plan_mismatch"
    assert h.rt.coord.scheduled(rid) is None  # nothing retries it forever
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    from mfm_dist.verify import verify_run

    report = verify_run(h.rt.events, h.rt.artifacts, h.rt.registry, RunId(rid))
    assert report.ok, report.violations


def test_missing_manifest_ends_the_run_failed(h: Harness) -> None:
    rid = h.submit("chain_demo", {"states": 2})
    started = h.log(rid)[0].event
    assert isinstance(started, RunStarted)
    assert isinstance(h.rt.artifacts, FileArtifactStore)
    h.rt.artifacts.object_path(started.manifest_id).unlink()
    assert h.coordinator.advance(rid) == StepOutcome.aborted("artifact_not_found")
    assert completed_status(h, rid) == "Failed"
    assert h.rt.coord.scheduled(rid) is None


# -- 5: one timer per run, in Redis --------------------------------------------------------------


def test_every_look_keeps_one_timer_and_finishing_removes_it(h: Harness) -> None:
    rid = h.submit("chain_demo", {"states": 2})
    assert h.rt.coord.scheduled(rid) is None
    before = now_millis()
    h.coordinator.advance(rid)
    due = h.rt.coord.scheduled(rid)
    watchdog_ms = h.rt.settings.watchdog_s * 1000
    assert due is not None and before + watchdog_ms <= due <= now_millis() + watchdog_ms
    h.drive(rid)
    assert h.rt.coord.scheduled(rid) is None
    assert h.rt.redis.zcard("mfm:timers") == 0


def test_poller_takes_each_due_timer_once_and_re_arms_it(h: Harness) -> None:
    from workers.timers import TimerPoller

    rids = [h.submit("chain_demo", {"states": 1}) for _ in range(3)]
    now = now_millis()
    h.rt.coord.schedule(rids[0], now - 10)
    h.rt.coord.schedule(rids[1], now - 5)
    h.rt.coord.schedule(rids[2], now + 60_000)
    sent: list[str] = []
    poller = TimerPoller(h.rt.coord, sent.append, poll_s=0.05, rearm_ms=5_000)
    other: list[str] = []
    second = TimerPoller(h.rt.coord, other.append, poll_s=0.05, rearm_ms=5_000)
    assert poller.poll_once() == 2 and second.poll_once() == 0  # two pollers never share one
    assert sorted(sent) == sorted(rids[:2]) and other == []
    due = h.rt.coord.scheduled(rids[0])
    assert due is not None and due >= now + 5_000  # a lost wake-up is re-sent a period later


def test_startup_arms_running_runs_without_a_timer(h: Harness) -> None:
    rids = [h.submit("chain_demo", {"states": 1}) for _ in range(5)]
    h.drive(rids[0])
    later = now_millis() + 60_000
    h.rt.coord.schedule(rids[1], later)  # already has one: left alone
    assert arm_unscheduled(h.rt.redis) == 3
    assert h.rt.coord.scheduled(rids[1]) == later
    assert all(h.rt.coord.scheduled(r) is not None for r in rids[1:])
    assert h.rt.coord.scheduled(rids[0]) is None


# -- 6: the coordinator lock is renewed, and a lost lock stops the advance ------------------------


def test_lock_lost_during_a_slow_advance_dispatches_nothing(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("chain_demo", {"states": 2})
    real = h.rt.run_context

    def slow(manifest_id: str) -> Any:  # S3 so slow that the lock expired meanwhile
        time.sleep(h.rt.settings.lock_ttl_s / 2)
        h.rt.redis.delete(run_key(rid, "lock"))
        return real(manifest_id)

    monkeypatch.setattr(h.rt, "run_context", slow)
    assert h.coordinator.advance(rid) == StepOutcome.LOCK_LOST
    assert h.dispatcher.chords == []
    monkeypatch.setattr(h.rt, "run_context", real)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    assert h.rt.redis.pttl(run_key(rid, "lock")) == -2  # released after the advance


# -- 7: only `after_run_completed` means "already finished" --------------------------------------


def test_rejected_run_completed_keeps_the_run_watched(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("chain_demo", {"states": 1})
    h.coordinator.advance(rid)
    assert [h.run(t) for t in h.dispatcher.take()] == [AttemptOutcome.COMPLETED]
    h.rt.coord.unschedule(rid)
    real = h.rt.events.append_next

    def reject(run_id: RunId, drafts: Any) -> Any:
        if any(isinstance(d.event, RunCompleted) for d in drafts):
            raise GuardViolation("open_attempt_exists", "an attempt is open")
        return real(run_id, drafts)

    monkeypatch.setattr(h.rt.events, "append_next", reject)
    assert h.coordinator.advance(rid) == StepOutcome.finish_rejected("open_attempt_exists")
    assert h.rt.coord.scheduled(rid) is not None
    assert h.rt.coord.recorded_plan(rid) is not None
    monkeypatch.setattr(h.rt.events, "append_next", real)
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    # 13: a finished run leaves no coordination keys behind (the plan included).
    assert h.rt.coord.recorded_plan(rid) is None
    assert h.rt.coord.scheduled(rid) is None


# -- 8: idempotent submission and a sweep over every RUNNING run ---------------------------------


def test_redelivered_submission_starts_one_run(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import submit as submit_mod

    sent = h.dispatcher.advances  # the runtime's wake-ups
    first = submit_mod.submit_run(
        "chain_demo", {"states": 1}, RunConfig(), runtime=h.rt, submission_id="task-1"
    )
    again = submit_mod.submit_run(
        "chain_demo", {"states": 1}, RunConfig(), runtime=h.rt, submission_id="task-1"
    )
    other = submit_mod.submit_run(
        "chain_demo", {"states": 1}, RunConfig(), runtime=h.rt, submission_id="task-2"
    )
    assert first == again != other
    assert sorted(str(s.run_id) for s in h.rt.events.list_runs()) == sorted([first, other])
    assert sent == [first, first, other]  # the redelivery re-sends the wake-up


def test_running_runs_pages_through_the_index(h: Harness) -> None:
    rids = [h.submit("chain_demo", {"states": 1}) for _ in range(5)]
    h.drive(rids[0])
    assert sorted(running_runs(h.rt.redis, page=2)) == sorted(rids[1:])


# -- 10-12: credentials, bounded caches, chord layout ---------------------------------------------


def test_redis_credentials_apply_to_broker_and_result_backend(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFM_REDIS_PASSWORD", "p@ss word")
    monkeypatch.setenv("MFM_REDIS_USERNAME", "mfm")
    monkeypatch.setenv("MFM_BROKER_URL", "redis://broker:6379/1")
    monkeypatch.delenv("MFM_RESULT_BACKEND", raising=False)
    settings = ClusterSettings.from_env()
    assert settings.broker_url == "redis://mfm:p%40ss%20word@broker:6379/1"
    assert settings.result_backend == settings.broker_url
    assert with_redis_credentials("redis://u:own@h:1/0") == "redis://u:own@h:1/0"
    assert with_redis_credentials("amqp://h//") == "amqp://h//"


def test_runtime_caches_are_bounded_and_replaced_coordinators_stop_their_threads(
    h: Harness,
) -> None:
    from workers import inline
    from workers.factory import create_app

    for n in range(FACT_CACHE_SIZE + 10):
        h.rt.facts(f"00000000-0000-4000-8000-{n:012d}")
    assert len(h.rt._facts) == FACT_CACHE_SIZE
    old = inline.coordinator()
    inline._coordinator = Coordinator(Runtime.from_env(), FakeDispatcher())  # another runtime's
    inline._coordinator.rt.close()
    fresh = inline.coordinator()
    assert fresh is not old
    assert inline._coordinator is fresh
    assert create_app(h.rt.settings).conf.worker_max_tasks_per_child == 1000


def test_chords_carry_time_limits_and_header_errors_are_statuses(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import dispatch, tasks

    sent: list[tuple[list[Any], Any]] = []

    class FakeChord:
        def __init__(self, header: Any, body: Any) -> None:
            self.header, self.body = header, body

        def apply_async(self) -> None:
            sent.append((list(self.header.tasks), self.body))

    monkeypatch.setattr(dispatch, "chord", FakeChord)
    monkeypatch.setattr(tasks, "get_runtime", lambda: h.rt)

    def task(sid: str, limit: float | None) -> AttemptTask:
        return AttemptTask("r", "m", sid, 0, "b", "f", 0, limit)

    dispatcher = dispatch.CeleryDispatcher(h.rt.app, h.rt.settings)
    dispatcher.send_chord("r", [task("a", None), task("b", 30.0)])
    ((header, _),) = sent
    assert [s.kwargs["state_id"] for s in header] == ["a", "b"]
    assert [s.options.get("time_limit") for s in header] == [None, 30.0]
    assert all(s.options.get("countdown") is None for s in header)

    def boom(*_: Any, **__: Any) -> str:
        raise redis.ConnectionError("redis down in acquire_lease")

    monkeypatch.setattr(tasks, "run_one_attempt", boom)
    status = tasks.execute_attempt("r", "m", "s", 0, "b", "f")
    assert status == "error:ConnectionError"


def test_redis_password_can_come_from_a_file(
    env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("from-a-secret\n")
    monkeypatch.setenv("MFM_REDIS_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("MFM_BROKER_URL", "redis://broker:6379/1")
    assert ClusterSettings.from_env().broker_url == "redis://:from-a-secret@broker:6379/1"


def test_a_history_naming_a_state_the_plan_lacks_ends_the_run(h: Harness) -> None:
    """The coordinator checks every state id of the log it reads (the same rule resume
    applies): another plan's history is a permanent fault, so the run ends `Failed`."""
    from mfm_dist.events import EventDraft, StateEntered
    from mfm_dist.ids import RunId, StateId

    rid = h.submit("chain_demo", {"states": 1})
    base = h.log(rid)[0].event.initial_snapshot_id  # type: ignore[union-attr]
    stranger = StateId("chain_demo.main.not_in_the_plan")
    entered = StateEntered(state_id=stranger, attempt=0, base_snapshot_id=base)
    h.rt.events.append_next(
        RunId(rid), [EventDraft(event=entered, ts_millis=1, state_id=stranger, attempt=0)]
    )
    assert h.coordinator.advance(rid) == StepOutcome.aborted("recovery_state_not_in_plan")
    assert completed_status(h, rid) == "Failed"
