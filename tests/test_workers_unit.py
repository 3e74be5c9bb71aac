"""The distributed workers' failure handling, in process: a real redis-server, a local
artifact directory, the real `Coordinator` and `execute_attempt`, and a dispatcher that
records what would be sent to Celery (tests run the attempts themselves)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dist_ops
import pytest
import redis
from servers import redis_server, redis_url  # noqa: F401

from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import prepare_run, record_run_start, store_manifest, validate_start
from mfm_dist.engine.progress import MAX_ORPHAN_RECOVERIES, ORPHAN_CODE
from mfm_dist.errors import StorageError, StorageUnavailable
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import RunId
from mfm_dist.stores.guards import GuardViolation
from workers.attempts import execute_attempt
from workers.coordinator import AttemptTask, Coordinator
from workers.faults import is_permanent_storage_fault, is_transient
from workers.leases import Coordination, LeaseKeeper, lease_key, run_key
from workers.runtime import FACT_CACHE_SIZE, Runtime
from workers.settings import Settings, with_redis_credentials
from workers.sweep import running_runs, wake_unwatched

LEASE_TTL_S = 0.4
WAIT_S = 10.0


@dataclass
class FakeDispatcher:
    chords: list[list[AttemptTask]] = field(default_factory=list)
    advances: list[tuple[str, float, str | None]] = field(default_factory=list)

    def send_chord(self, run_id: str, attempts: list[AttemptTask]) -> None:
        self.chords.append(attempts)

    def send_advance(self, run_id: str, countdown_s: float, *, watchdog: str | None = None) -> None:
        self.advances.append((run_id, countdown_s, watchdog))

    def take(self) -> list[AttemptTask]:
        out = [t for c in self.chords for t in c]
        self.chords.clear()
        return out

    def watchdogs(self) -> list[str]:
        return [w for _, _, w in self.advances if w]


@pytest.fixture
def env(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:  # noqa: F811
    monkeypatch.setenv("MFM_EVENTS_URL", redis_url)
    monkeypatch.setenv("MFM_BROKER_URL", redis_url)
    monkeypatch.setenv("MFM_ARTIFACTS_URL", f"file://{tmp_path / 'art'}")
    monkeypatch.setenv("MFM_OPERATIONS", "dist_ops")
    monkeypatch.setenv("MFM_LEASE_TTL_S", str(LEASE_TTL_S))
    monkeypatch.setenv("MFM_ARTIFACT_CACHE_TTL_S", "0")
    monkeypatch.delenv("MFM_REDIS_PASSWORD", raising=False)
    dist_ops.COUNTED.clear()
    dist_ops.AFTER_CALL.clear()
    yield
    dist_ops.AFTER_CALL.clear()


@dataclass
class Harness:
    rt: Runtime
    dispatcher: FakeDispatcher
    coordinator: Coordinator

    def submit(self, target: str, run_input: Any, config: RunConfig | None = None) -> str:
        rt = self.rt
        prepared = prepare_run(rt.registry, target, run_input, config or RunConfig())
        manifest_id = store_manifest(rt.artifacts, prepared.manifest)
        initial = validate_start(
            rt.artifacts,
            plan=prepared.plan,
            run_config=prepared.run_config,
            manifest=prepared.manifest,
            manifest_id=manifest_id,
            initial_context=prepared.initial_context,
        )
        rid, _ = record_run_start(
            rt.events,
            rt.artifacts,
            plan=prepared.plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
        )
        rt.coord.record_plan(str(rid), prepared.plan.fingerprint())
        return str(rid)

    def run(self, task: AttemptTask) -> str:
        return execute_attempt(
            self.rt,
            run_id=task.run_id,
            manifest_id=task.manifest_id,
            state_id=task.state_id,
            attempt=task.attempt,
            base_snapshot_id=task.base_snapshot_id,
            plan_fingerprint=task.plan_fingerprint,
        )

    def log(self, rid: str) -> list[EventEnvelope]:
        return self.rt.events.read_range(RunId(rid))

    def drive(self, rid: str, rounds: int = 30) -> list[str]:
        """Advance and run every dispatched attempt until the run completes."""
        statuses: list[str] = []
        for _ in range(rounds):
            if self.coordinator.advance(rid) == "finished":
                return statuses
            statuses.extend(self.run(t) for t in self.dispatcher.take())
        raise AssertionError(f"run did not finish within {rounds} rounds: {statuses}")


@pytest.fixture
def h(env: None) -> Iterator[Harness]:
    rt = Runtime()
    dispatcher = FakeDispatcher()
    coordinator = Coordinator(rt, dispatcher)
    yield Harness(rt, dispatcher, coordinator)
    coordinator.close()
    rt.close()


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def completed_status(h: Harness, rid: str) -> str:
    last = h.log(rid)[-1].event
    assert isinstance(last, RunCompleted)
    return str(last.status.value if hasattr(last.status, "value") else last.status)


# -- 1: permanent faults end the run instead of looping ------------------------------------------


def test_permanent_fault_inside_attempt_ends_run_after_the_orphan_cap(h: Harness) -> None:
    rid = h.submit("poison_demo", {})
    statuses = h.drive(rid)
    assert statuses == ["error:artifact_content_address_mismatch"] * (MAX_ORPHAN_RECOVERIES + 1)
    failures = [e.event for e in h.log(rid) if isinstance(e.event, StateFailed)]
    assert [f.error.code for f in failures] == [ORPHAN_CODE] * (MAX_ORPHAN_RECOVERIES + 1)
    assert completed_status(h, rid) == "Failed"


def test_missing_base_snapshot_is_recorded_as_a_non_retryable_failure(h: Harness) -> None:
    rid = h.submit("chain_demo", {"states": 2})
    assert h.coordinator.advance(rid) == "dispatched:1"
    (task,) = h.dispatcher.take()
    worker = Harness(Runtime(), FakeDispatcher(), h.coordinator)  # another process
    worker.rt.artifacts.object_path(task.base_snapshot_id).unlink()  # type: ignore[attr-defined]
    try:
        status = worker.run(task)
    finally:
        worker.rt.close()
    assert status.startswith("failed:")
    entered, failed = (e.event for e in h.log(rid)[-2:])
    assert isinstance(entered, StateEntered) and isinstance(failed, StateFailed)
    assert failed.error.code == status.removeprefix("failed:")
    assert failed.error.retryable is False and failed.failure_snapshot_id is None
    assert h.rt.coord.live_leases(rid, [task.state_id]) == {}
    assert h.coordinator.advance(rid) == "finished"
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
    assert h.coordinator.advance(rid) == "dispatched:1"
    (task,) = h.dispatcher.take()
    key = lease_key(rid, task.state_id)

    def steal() -> None:  # the lease expired and another worker took the attempt over
        h.rt.redis.set(key, f"{task.attempt}:other-token:other-host:1", px=60_000)
        dist_ops.AFTER_CALL.clear()

    dist_ops.AFTER_CALL.append(steal)
    assert h.run(task) == "superseded"
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
    assert h.run(first) == "completed"
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
    assert h.run(again) == "completed"
    h.drive(rid)
    assert completed_status(h, rid) == "Completed"


# -- 4: Redis OOM is transient and never ends the liveness chain ---------------------------------


def test_oom_append_is_transient_and_a_failed_advance_re_arms_the_watchdog(
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
    # A transient fault mid-advance (S3 down while loading): the watchdog is armed anyway.
    h.rt.coord.forget_run(rid)

    def down(*_: Any, **__: Any) -> Any:
        raise StorageUnavailable("s3 down")

    monkeypatch.setattr(h.rt, "run_context", down)
    with pytest.raises(StorageUnavailable):
        h.coordinator.advance(rid)
    assert len(h.dispatcher.watchdogs()) == 1
    assert h.rt.coord.watchdog_token(rid) == h.dispatcher.watchdogs()[0]


def test_permanent_advance_failure_does_not_re_arm(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mfm_dist.errors import RunError

    rid = h.submit("chain_demo", {"states": 2})

    def broken(*_: Any, **__: Any) -> Any:
        raise RunError("plan_mismatch", "different code")

    monkeypatch.setattr(h.rt, "run_context", broken)
    with pytest.raises(RunError):
        h.coordinator.advance(rid)
    assert h.dispatcher.watchdogs() == []


# -- 5: one watchdog chain per run ---------------------------------------------------------------


def test_watchdog_chains_collapse_to_one(h: Harness) -> None:
    rid = h.submit("chain_demo", {"states": 3})
    h.coordinator.advance(rid)
    pending = h.dispatcher.watchdogs()
    assert len(pending) == 1
    h.dispatcher.advances.clear()
    # A control worker restarts: its held message comes back AND the startup sweep runs.
    sent: list[str] = []
    wake_unwatched(h.rt.coord, lambda _rid, tok: sent.append(tok), 10_000, take_over=True)
    assert len(sent) == 1
    pending += sent
    for _ in range(4):
        fired, pending = pending, []
        for token in fired:
            h.coordinator.advance(rid, watchdog=token)
            pending += h.dispatcher.watchdogs()
            h.dispatcher.advances.clear()
        assert len(pending) == 1


# -- 6: the coordinator lock is renewed, and a lost lock stops the advance ------------------------


def test_lock_lost_during_a_slow_advance_dispatches_nothing(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("chain_demo", {"states": 2})
    real = h.rt.run_context

    def slow(manifest_id: str) -> Any:  # S3 so slow that the lock expired meanwhile
        h.rt.redis.delete(run_key(rid, "lock"))
        return real(manifest_id)

    monkeypatch.setattr(h.rt, "run_context", slow)
    assert h.coordinator.advance(rid) == "lock_lost"
    assert h.dispatcher.chords == []
    monkeypatch.setattr(h.rt, "run_context", real)
    assert h.coordinator.advance(rid) == "dispatched:1"
    assert h.rt.redis.pttl(run_key(rid, "lock")) == -2  # released after the advance


# -- 7: only `after_run_completed` means "already finished" --------------------------------------


def test_rejected_run_completed_keeps_the_run_watched(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("chain_demo", {"states": 1})
    h.coordinator.advance(rid)
    assert [h.run(t) for t in h.dispatcher.take()] == ["completed"]
    h.dispatcher.advances.clear()
    h.rt.redis.delete(run_key(rid, "watchdog"))
    real = h.rt.events.append_next

    def reject(run_id: RunId, drafts: Any) -> Any:
        if any(isinstance(d.event, RunCompleted) for d in drafts):
            raise GuardViolation("open_attempt_exists", "an attempt is open")
        return real(run_id, drafts)

    monkeypatch.setattr(h.rt.events, "append_next", reject)
    assert h.coordinator.advance(rid) == "finish_rejected:open_attempt_exists"
    assert len(h.dispatcher.watchdogs()) == 1
    assert h.rt.coord.recorded_plan(rid) is not None
    monkeypatch.setattr(h.rt.events, "append_next", real)
    assert h.coordinator.advance(rid) == "finished"
    # 13: a finished run leaves no coordination keys behind (the plan included).
    assert h.rt.coord.recorded_plan(rid) is None
    assert h.rt.coord.watchdog_token(rid) is None


# -- 8: idempotent submission and a sweep over every RUNNING run ---------------------------------


def test_redelivered_submission_starts_one_run(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import submit as submit_mod
    from workers import tasks

    sent: list[str] = []
    monkeypatch.setattr(
        tasks.advance, "apply_async", lambda args, **_: sent.append(args[0]), raising=False
    )
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


def test_sweep_pages_through_every_running_run(h: Harness) -> None:
    rids = [h.submit("chain_demo", {"states": 1}) for _ in range(5)]
    h.drive(rids[0])
    assert sorted(running_runs(h.rt.redis, page=2)) == sorted(rids[1:])
    h.rt.coord.claim_watchdog(rids[1], 60_000)  # already watched
    woken: list[str] = []
    wake_unwatched(h.rt.coord, lambda rid, _t: woken.append(rid), 60_000, take_over=False)
    assert sorted(woken) == sorted(rids[2:])


# -- 10-12: credentials, bounded caches, chord layout ---------------------------------------------


def test_redis_credentials_apply_to_broker_and_result_backend(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFM_REDIS_PASSWORD", "p@ss word")
    monkeypatch.setenv("MFM_REDIS_USERNAME", "mfm")
    monkeypatch.setenv("MFM_BROKER_URL", "redis://broker:6379/1")
    monkeypatch.delenv("MFM_RESULT_BACKEND", raising=False)
    settings = Settings.from_env()
    assert settings.broker_url == "redis://mfm:p%40ss%20word@broker:6379/1"
    assert settings.result_backend == settings.broker_url
    assert with_redis_credentials("redis://u:own@h:1/0") == "redis://u:own@h:1/0"
    assert with_redis_credentials("amqp://h//") == "amqp://h//"


def test_runtime_caches_are_bounded_and_replaced_coordinators_stop_their_threads(
    h: Harness,
) -> None:
    from workers import tasks
    from workers.app import create_app

    for n in range(FACT_CACHE_SIZE + 10):
        h.rt.facts(f"00000000-0000-4000-8000-{n:012d}")
    assert len(h.rt._facts) == FACT_CACHE_SIZE
    old = tasks.coordinator()
    tasks._coordinator = Coordinator(Runtime(), FakeDispatcher())  # another runtime's
    tasks._coordinator.rt.close()
    fresh = tasks.coordinator()
    assert fresh is not old
    assert tasks._coordinator is fresh
    assert create_app().conf.worker_max_tasks_per_child == 1000


def test_backoff_attempts_get_their_own_chord_and_header_errors_are_statuses(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import tasks

    sent: list[tuple[list[Any], Any]] = []

    class FakeChord:
        def __init__(self, header: Any, body: Any) -> None:
            self.header, self.body = header, body

        def apply_async(self) -> None:
            sent.append((list(self.header.tasks), self.body))

    monkeypatch.setattr(tasks, "chord", FakeChord)
    monkeypatch.setattr(tasks, "get_runtime", lambda: h.rt)

    def task(sid: str, countdown: float) -> AttemptTask:
        return AttemptTask("r", "m", sid, 0, "b", "f", countdown, 0)

    tasks.CeleryDispatcher().send_chord("r", [task("a", 0), task("b", 30), task("c", 0)])
    assert [[s.kwargs["state_id"] for s in header] for header, _ in sent] == [["a", "c"], ["b"]]
    assert [s.options.get("countdown") for s in sent[1][0]] == [30]

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
    assert Settings.from_env().broker_url == "redis://:from-a-secret@broker:6379/1"
