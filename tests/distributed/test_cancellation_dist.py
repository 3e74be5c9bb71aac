"""Cancellation and run deadlines on the distributed backend, in process: the real coordinator
and attempt code against a real redis-server (docs/cancellation.md). A real cluster's
`mfm cancel --cluster` is in tests/distributed/test_cancellation_dist.py and
tests/distributed/test_liveness_cluster.py."""

from __future__ import annotations

import threading
import time

import pytest

from mfm_dist.config import Duration, FanOutJoin, FixedBackoff, RetryPolicy, RunConfig
from mfm_dist.engine.cancellation import CANCELLED_CODE, RUN_DEADLINE_REASON, request_of
from mfm_dist.events import RunCompleted, RunStatus, StateEntered, StateFailed
from mfm_dist.ids import RunId
from mfm_dist.verify import verify_run
from support import dist_ops
from support.worker_harness import Harness
from workers.cancel import cancel_run
from workers.outcomes import AttemptOutcome, StepOutcome

BOUND_S = 3.0  # lease TTL in these tests is 0.4 s; the keeper renews every TTL/3


@pytest.fixture(autouse=True)
def _release_stuck() -> object:
    dist_ops.STUCK_ENTERED.clear()
    dist_ops.CANCEL_RELEASE.clear()
    yield None
    dist_ops.CANCEL_RELEASE.append(True)  # let abandoned handler threads end


def _config() -> RunConfig:
    return RunConfig(
        execution_mode=FanOutJoin(max_concurrency=4),
        retry_policy=RetryPolicy(max_attempts=3, backoff=FixedBackoff(delay=Duration(secs=30))),
    )


def _verify_ok(h: Harness, rid: str) -> None:
    report = verify_run(h.rt.events, h.rt.artifacts, h.rt.registry, rid)
    assert report.ok, report.violations


def test_cancel_closes_running_queued_and_backoff_attempts(h: Harness) -> None:
    rid = h.submit("cancel_demo", {}, _config())
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(3)
    tasks = {t.state_id.rsplit(".", 1)[1]: t for t in h.dispatcher.take()}
    assert h.run(tasks["flaky"]) == AttemptOutcome.failed("upstream_unavailable")
    box: dict[str, AttemptOutcome] = {}
    runner = threading.Thread(target=lambda: box.setdefault("stuck", h.run(tasks["stuck"])))
    runner.start()
    while not dist_ops.STUCK_ENTERED:
        time.sleep(0.01)
    assert h.coordinator.advance(rid) == StepOutcome.WAITING  # flaky now waits out its 30 s backoff

    outcome = cancel_run(h.rt, rid, "bad deploy", "ops@example")
    assert outcome.status == "requested" and outcome.seq is not None
    assert h.dispatcher.advances[-1] == rid  # the coordinator was woken
    # A queued attempt that arrives now is dropped by the store: nothing of it is recorded.
    head = h.rt.events.head_seq(RunId(rid))
    assert h.run(tasks["plain"]) == AttemptOutcome.CANCELLED
    assert h.rt.events.head_seq(RunId(rid)) == head

    asked = time.monotonic()
    assert h.coordinator.advance(rid) == StepOutcome.CANCELLED
    runner.join(BOUND_S)
    assert not runner.is_alive() and box["stuck"] == AttemptOutcome.SUPERSEDED
    assert time.monotonic() - asked < BOUND_S

    log = h.log(rid)
    assert log[outcome.seq - 1].seq == outcome.seq and request_of(log[outcome.seq - 1])
    after = log[outcome.seq :]
    assert not any(isinstance(e.event, StateEntered) for e in after)
    closed = [e for e in after if isinstance(e.event, StateFailed)]
    assert [str(e.state_id).rsplit(".", 1)[1] for e in closed] == ["stuck"]
    assert closed[0].event.error.code == CANCELLED_CODE  # type: ignore[union-attr]
    last = log[-1].event
    assert isinstance(last, RunCompleted) and last.status == RunStatus.CANCELLED
    flaky = [e for e in log if isinstance(e.event, StateEntered) and "flaky" in str(e.state_id)]
    assert len(flaky) == 1  # the retry in backoff was never sent
    assert h.rt.coord.reservations(rid) == {}
    assert h.rt.coord.scheduled(rid) is None
    assert h.dispatcher.take() == []
    _verify_ok(h, rid)
    # Idempotent afterwards: refused as finished, nothing appended; advance is a no-op.
    assert cancel_run(h.rt, rid, "again").status == "finished"
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    assert len(h.log(rid)) == len(log)


def test_cancel_racing_the_last_completion_ends_cancelled(h: Harness) -> None:
    """Every state completed but RunCompleted not yet written when the request lands: the
    store allows only `Cancelled` now, and the coordinator writes exactly that."""
    dist_ops.CANCEL_RELEASE.append(True)
    config = RunConfig(
        execution_mode=FanOutJoin(max_concurrency=4), retry_policy=RetryPolicy(max_attempts=2)
    )
    rid = h.submit("cancel_demo", {}, config)

    def join_completed() -> bool:
        return any(
            "join" in str(e.state_id) and e.event.__class__.__name__ == "StateCompleted"
            for e in h.log(rid)
        )

    for _ in range(10):
        if join_completed():
            break
        h.coordinator.advance(rid)
        for task in h.dispatcher.take():
            h.run(task)
    assert join_completed() and not isinstance(h.log(rid)[-1].event, RunCompleted)
    assert cancel_run(h.rt, rid, "late").status == "requested"
    assert h.coordinator.advance(rid) == StepOutcome.CANCELLED
    last = h.log(rid)[-1].event
    assert isinstance(last, RunCompleted) and last.status == RunStatus.CANCELLED
    _verify_ok(h, rid)


def test_run_deadline_cancels_on_the_cluster(h: Harness) -> None:
    config = RunConfig(
        execution_mode=FanOutJoin(max_concurrency=4), run_timeout=Duration.from_millis(600)
    )
    rid = h.submit("cancel_demo", {}, config)
    h.coordinator.advance(rid)
    started_ms = h.log(rid)[0].ts_millis
    due = h.rt.coord.scheduled(rid)
    assert due is not None and due <= started_ms + 600  # the timer fires at the deadline
    tasks = {t.state_id.rsplit(".", 1)[1]: t for t in h.dispatcher.take()}
    runner = threading.Thread(target=lambda: h.run(tasks["stuck"]))
    runner.start()
    while not dist_ops.STUCK_ENTERED:
        time.sleep(0.01)
    while time.time() * 1000 < due:
        time.sleep(0.02)
    assert h.coordinator.advance(rid) == StepOutcome.CANCELLED
    runner.join(BOUND_S)
    assert not runner.is_alive()
    [request] = [r for r in map(request_of, h.log(rid)) if r is not None]
    assert request.reason == RUN_DEADLINE_REASON
    _verify_ok(h, rid)
