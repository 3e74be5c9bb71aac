"""Cancellation and run deadlines on the embedded engine (docs/cancellation.md).

The store guards themselves are in the store contract suite; the cluster's coordinator
and workers in tests/distributed/test_cancellation_dist.py and
tests/distributed/test_liveness_cluster.py.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfm_dist import FnState, RunConfig, prepare_run, store_manifest
from mfm_dist.config import Duration, FanOutJoin
from mfm_dist.engine.cancellation import (
    CANCELLED_CODE,
    RUN_DEADLINE_REASON,
    request_cancel,
    request_of,
)
from mfm_dist.errors import MfmError, StorageError
from mfm_dist.events import (
    EventEnvelope,
    RunCompleted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.stores import InMemoryEventStore
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.sqlite import SqliteEventStore
from mfm_dist.verify import verify_run
from support.engine_helpers import GraphOp, Harness, registry_with

BOUND_S = 3.0
"""Generous: the engine looks for a foreign request every 0.2 s."""


@pytest.fixture(params=["memory", "sqlite"])
def events(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    store: EventStore = (
        InMemoryEventStore() if request.param == "memory" else SqliteEventStore(tmp_path / "e.db")
    )
    yield store
    store.close()


class Gate:
    """A handler that blocks in plain Python (ignoring cancellation) until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def handler(self, ctx: Any, io: Any, rec: Any) -> None:
        self.entered.set()
        while not self.release.wait(0.01):
            pass
        self.finished.set()


def _op(gate: Gate) -> GraphOp:
    def quick(ctx: Any, io: Any, rec: Any) -> None:
        ctx.set("quick", True)

    def after(ctx: Any, io: Any, rec: Any) -> None:
        ctx.set("after", True)

    # quick and stuck run in parallel; after waits on stuck.
    return GraphOp(
        "cancel_demo",
        {"quick": FnState(quick), "stuck": FnState(gate.handler), "after": FnState(after)},
        [("stuck", "after")],
    )


def _start(h: Harness, target: str, config: RunConfig, **engine: Any) -> tuple[RunId, Any]:
    """Start a run on a thread; returns its id and a handle whose `.result` is filled."""
    prepared = prepare_run(h.registry, target, {}, config)
    store_manifest(h.artifacts, prepared.manifest)
    rid = RunId.mint()
    box: dict[str, Any] = {}

    def drive() -> None:
        try:
            box["result"] = h.engine(**engine).start(
                plan=prepared.plan,
                run_config=config,
                manifest=prepared.manifest,
                manifest_id=prepared.manifest_id,
                initial_context=prepared.initial_context,
                run_id=rid,
            )
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    box["thread"] = thread
    return rid, box


def _join(box: dict[str, Any], within_s: float) -> RunResult:
    box["thread"].join(within_s)
    assert not box["thread"].is_alive(), f"the run did not end within {within_s} s"
    if "error" in box:
        raise box["error"]
    result = box["result"]
    assert isinstance(result, RunResult)
    return result


def _verify_ok(h: Harness, rid: RunId) -> None:
    report = verify_run(h.events, h.artifacts, h.registry, str(rid))
    assert report.ok, report.violations


FAN_OUT = RunConfig(execution_mode=FanOutJoin(max_concurrency=4))


def test_cancel_stops_a_handler_that_ignores_it_and_ends_the_run_cancelled(
    events: EventStore,
) -> None:
    gate = Gate()
    h = Harness(registry_with(_op(gate)), events=events)
    rid, box = _start(h, "cancel_demo", FAN_OUT)
    assert gate.entered.wait(10)
    asked = time.monotonic()
    outcome = request_cancel(h.events, rid, "operator stop", "tester@host")
    assert outcome.status == "requested" and outcome.seq is not None
    result = _join(box, BOUND_S)
    assert time.monotonic() - asked < BOUND_S
    assert result.phase == RunPhase.CANCELLED
    assert result.error is not None and result.error.code == CANCELLED_CODE
    assert "operator stop" in result.error.message

    history = h.events.read_range(rid)
    request = request_of(history[outcome.seq - 1])
    assert request is not None and request.requested_by == "tester@host"
    stuck = [e for e in history if str(e.state_id or "").endswith(".stuck")]
    assert isinstance(stuck[-1].event, StateFailed)
    assert stuck[-1].event.error.code == CANCELLED_CODE and not stuck[-1].event.error.retryable
    assert stuck[-1].seq > outcome.seq
    # `after` (downstream of the cancelled state) never started; the run ended Cancelled.
    assert not any(str(e.state_id or "").endswith(".after") for e in history)
    last = history[-1].event
    assert isinstance(last, RunCompleted) and last.status == RunStatus.CANCELLED
    assert result.final_snapshot_id == last.final_snapshot_id
    _verify_ok(h, rid)

    # Resume appends nothing and reports the same outcome; a second cancel is a no-op.
    head = h.events.head_seq(rid)
    again = h.engine().resume(rid)
    assert again.phase == RunPhase.CANCELLED and again.final_snapshot_id == result.final_snapshot_id
    assert request_cancel(h.events, rid, "again").status == "finished"
    # The abandoned handler ends later; nothing more is ever recorded.
    gate.release.set()
    assert gate.finished.wait(5)
    time.sleep(0.3)
    assert h.events.head_seq(rid) == head


def test_second_request_is_a_no_op_and_a_finished_run_is_left_alone(events: EventStore) -> None:
    gate = Gate()
    h = Harness(registry_with(_op(gate)), events=events)
    rid, box = _start(h, "cancel_demo", FAN_OUT)
    assert gate.entered.wait(10)
    first = request_cancel(h.events, rid, "first")
    second = request_cancel(h.events, rid, "second")
    assert (first.status, second.status) == ("requested", "already_requested")
    result = _join(box, BOUND_S)
    assert result.error is not None and "first" in result.error.message
    requests = [e for e in h.events.read_range(rid) if request_of(e) is not None]
    assert len(requests) == 1
    gate.release.set()


def test_finished_run_refuses_and_bad_requests_are_structured(events: EventStore) -> None:
    def one(ctx: Any, io: Any, rec: Any) -> None:
        ctx.set("x", 1)

    h = Harness(registry_with(GraphOp("one", {"a": FnState(one)})), events=events)
    result = h.run("one", {})
    head = h.events.head_seq(result.run_id)
    assert request_cancel(h.events, result.run_id, "too late").status == "finished"
    assert h.events.head_seq(result.run_id) == head
    with pytest.raises(MfmError) as missing:
        request_cancel(h.events, RunId.mint(), "nothing there")
    assert missing.value.info.code == "run_not_found"
    for reason in ("", "two\nlines", "x" * 501):
        with pytest.raises(MfmError) as bad:
            request_cancel(h.events, result.run_id, reason)
        assert bad.value.info.code == "cancel_request_invalid"
    secret = "password=hunter2"
    with pytest.raises(MfmError) as leaked:
        request_cancel(h.events, result.run_id, f"rotate {secret}")
    assert leaked.value.info.code.startswith("secret")
    assert secret not in str(leaked.value) and secret not in repr(leaked.value.info)
    assert h.events.head_seq(result.run_id) == head


class _CrashOnCompletion(InMemoryEventStore):
    """Dies when the first StateCompleted is appended: the attempt stays open."""

    armed = True

    def append(self, run_id: RunId, expected_seq: int, envelopes: Any) -> None:
        if self.armed and any(isinstance(e.event, StateCompleted) for e in envelopes):
            self.armed = False
            raise StorageError("simulated_crash", "the process died here")
        super().append(run_id, expected_seq, envelopes)


def test_run_cancelled_while_no_driver_is_closed_by_resume() -> None:
    def a(ctx: Any, io: Any, rec: Any) -> None:
        ctx.set("a", 1)

    def b(ctx: Any, io: Any, rec: Any) -> None:
        ctx.set("b", 1)

    h = Harness(
        registry_with(GraphOp("ab", {"a": FnState(a), "b": FnState(b)}, [("a", "b")])),
        events=_CrashOnCompletion(),
    )
    with pytest.raises(StorageError):
        h.run("ab", {})
    rid = h.events.list_runs()[0].run_id
    assert request_cancel(h.events, rid, "abandoned").status == "requested"
    result = h.engine().resume(rid)
    assert result.phase == RunPhase.CANCELLED
    history = h.events.read_range(rid)
    closed = [e.event for e in history if isinstance(e.event, StateFailed)]
    assert len(closed) == 1 and closed[0].error.code == CANCELLED_CODE
    assert not any(
        isinstance(e.event, StateEntered) and str(e.state_id).endswith(".b") for e in history
    )
    _verify_ok(h, rid)


def test_run_deadline_cancels_the_run_with_its_reason(events: EventStore) -> None:
    async def forever(ctx: Any, io: Any, rec: Any) -> None:
        while True:
            await asyncio.sleep(0.05)

    h = Harness(registry_with(GraphOp("forever", {"a": FnState(forever)})), events=events)
    config = RunConfig(run_timeout=Duration.from_millis(300))
    started = time.monotonic()
    result = h.run("forever", {}, config)
    assert time.monotonic() - started < BOUND_S
    assert result.phase == RunPhase.CANCELLED
    history = h.events.read_range(result.run_id)
    [request] = [r for r in map(request_of, history) if r is not None]
    assert request.reason == RUN_DEADLINE_REASON
    assert result.error is not None and RUN_DEADLINE_REASON in result.error.message
    _verify_ok(h, result.run_id)


def test_run_timeout_is_omitted_from_manifests_while_unset() -> None:
    from mfm_dist.canonical import canonical_bytes

    assert b"run_timeout" not in canonical_bytes(RunConfig().model_dump(mode="json"))
    timed = RunConfig(run_timeout=Duration(secs=60))
    assert RunConfig.model_validate(timed.model_dump(mode="json")) == timed
    with pytest.raises(ValueError):
        RunConfig(run_timeout=Duration(secs=0))


def _outcome_matches(history: list[EventEnvelope], cancel_status: str) -> RunStatus:
    last = history[-1].event
    assert isinstance(last, RunCompleted)
    requested = any(request_of(e) is not None for e in history)
    assert requested == (cancel_status == "requested")
    assert (last.status == RunStatus.CANCELLED) == requested
    return last.status


def test_cancel_racing_completion_has_one_consistent_outcome(events: EventStore) -> None:
    """Whatever the timing: the request either lands first (the run ends Cancelled) or is
    refused because the run had finished (it stays Completed) — never both, never neither."""

    def step(name: str) -> FnState:
        def fn(ctx: Any, io: Any, rec: Any) -> None:
            time.sleep(0.002)
            ctx.set(name, 1)

        return FnState(fn)

    op = GraphOp("race", {n: step(n) for n in "abcd"}, [("a", "b"), ("b", "c"), ("c", "d")])
    h = Harness(registry_with(op), events=events)
    rng = random.Random(7)
    seen: set[RunStatus] = set()
    for _ in range(24):
        rid, box = _start(h, "race", RunConfig())
        time.sleep(rng.uniform(0.0, 0.03))
        try:
            outcome = request_cancel(h.events, rid, "race")
        except MfmError as exc:  # the run was not started yet
            assert exc.info.code == "run_not_found"
            _join(box, 10)
            continue
        result = _join(box, 10)
        status = _outcome_matches(h.events.read_range(rid), outcome.status)
        assert result.phase.value == status.value
        seen.add(status)
        _verify_ok(h, rid)
    assert RunStatus.CANCELLED in seen
