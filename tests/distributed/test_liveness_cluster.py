"""Bounded recovery on a real cluster: redis-server (AOF always), S3, real Celery workers —
with the broker's visibility timeout left at its production default (one hour), so no
recovery here can come from redelivery of unacked messages (docs: distributed liveness).

The bound: one lease TTL + one watchdog period + one coordinator step. With the settings
below (lease 2 s, watchdog 3 s) that is about 6 s; the assertions allow 10 s for two
shared cores."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfm_dist.config import FanOutJoin, RetryPolicy, RunConfig
from mfm_dist.events import RunCompleted, StateCompleted, StateEntered, StateFailed
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase, RunResult
from support.cluster import LocalCluster
from support.cluster_checks import assert_clean_history, embedded_final, events_of, finished
from workers.runtime import Runtime, get_runtime
from workers.submit import submit_run, wait_for_run

pytestmark = pytest.mark.slow

LEASE_TTL_S = 2.0
BOUND_S = 10.0
FAN8 = RunConfig(execution_mode=FanOutJoin(max_concurrency=8))


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, faults: Path) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("liveness-cluster")
    with LocalCluster(
        root,
        attempt_workers=2,
        lease_ttl_s=LEASE_TTL_S,
        visibility_timeout_s=3600.0,
        extra_env={"DIST_OPS_FAULTS": str(faults), "MFM_ARTIFACT_CACHE_TTL_S": "0"},
    ) as c:
        c.activate()
        yield c


@pytest.fixture
def rt(cluster: LocalCluster) -> Runtime:
    return get_runtime()


def arm(faults: Path, mode: str) -> None:
    for old in faults.glob("*"):
        old.unlink()
    (faults / "arm").write_text(mode)


def died(faults: Path) -> tuple[float, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list(faults.glob("died-*"))
        if found:
            text = found[0].read_text().split("\n")
            if len(text) >= 2 and text[1]:
                return float(text[0]), text[1]
        time.sleep(0.05)
    raise AssertionError("no attempt process died")


def completed_at(rt: Runtime, run_id: RunId, state_id: str) -> float:
    for e in events_of(rt, run_id):
        if isinstance(e.event, StateCompleted) and str(e.event.state_id) == state_id:
            return e.ts_millis / 1000.0
    raise AssertionError(f"{state_id} never completed")


@pytest.mark.parametrize("mode", ["child", "worker"])
def test_attempt_killed_between_lease_and_entered_recovers_within_the_bound(
    cluster: LocalCluster, rt: Runtime, faults: Path, mode: str
) -> None:
    """`child`: the pool child dies (Celery redelivers its message at once: the new copy
    takes over the dead holder's lease). `worker`: the whole worker dies, its message stays
    unacked for the visibility timeout: the coordinator sees the claimed reservation's
    holder is dead and dispatches again."""
    arm(faults, mode)
    run_id = submit_run("chain_demo", {"states": 3}, RunConfig(), runtime=rt)
    killed_at, state_id = died(faults)
    result = finished(cluster, run_id, rt)
    assert result.phase == RunPhase.COMPLETED
    recovery = completed_at(rt, run_id, state_id) - killed_at
    assert recovery < BOUND_S, f"{state_id} completed {recovery:.1f}s after the kill"
    assert_clean_history(events_of(rt, run_id))


def test_redis_killed_and_restarted_under_a_surviving_control_worker(
    cluster: LocalCluster, rt: Runtime
) -> None:
    """Wake-ups that workers held when the connection dropped are gone until the visibility
    timeout; the runs' timers in Redis bring them back within the bound."""
    for _ in range(2):
        run_input = {"items": 40}
        run_id = submit_run("fanout_demo", run_input, FAN8, runtime=rt)
        deadline = time.monotonic() + 60
        while sum(isinstance(e.event, StateCompleted) for e in events_of(rt, run_id)) < 5:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)
        cluster.restart_redis(kill=True)
        restarted = time.monotonic()
        result = wait_for_run(str(run_id), 60, runtime=rt)
        stalled = time.monotonic() - restarted
        assert result.phase == RunPhase.COMPLETED
        assert stalled < BOUND_S + 5, f"the run finished {stalled:.1f}s after the restart"
        assert_clean_history(events_of(rt, run_id))
        assert str(result.final_snapshot_id) == embedded_final("fanout_demo", run_input, FAN8)


def test_waiting_for_a_run_rides_out_a_redis_restart(cluster: LocalCluster, rt: Runtime) -> None:
    run_id = submit_run("chain_demo", {"states": 30}, RunConfig(), runtime=rt)
    box: dict[str, RunResult | BaseException] = {}

    def wait() -> None:
        try:
            box["result"] = wait_for_run(str(run_id), 90, runtime=rt)
        except BaseException as exc:
            box["result"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    cluster.restart_redis(kill=True)
    waiter.join(120)
    result = box["result"]
    assert isinstance(result, RunResult), result
    assert result.phase == RunPhase.COMPLETED


def test_hung_handler_on_the_cluster_is_failed_by_its_timeout_and_retried(
    cluster: LocalCluster, rt: Runtime
) -> None:
    config = RunConfig(retry_policy=RetryPolicy(max_attempts=2))
    run_id = submit_run(
        "hang_demo", {"timeout_ms": 1000, "blocking": True}, config, runtime=rt
    )
    result = finished(cluster, run_id, rt)
    assert result.phase == RunPhase.COMPLETED
    envelopes = events_of(rt, run_id)
    failed = [e.event for e in envelopes if isinstance(e.event, StateFailed)]
    assert [(f.error.code, f.error.retryable) for f in failed] == [("state_timeout", True)]
    assert isinstance(envelopes[-1].event, RunCompleted)
    # The pool process that held the stuck handler was replaced.
    deadline = time.monotonic() + 15
    while "retiring this pool process" not in cluster.logs():
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)


def test_cancel_on_the_cluster_stops_a_handler_that_ignores_it(
    cluster: LocalCluster, rt: Runtime
) -> None:
    """`mfm cancel --cluster`: the run ends Cancelled within the bound although its handler
    blocks in plain Python; the worker's pool process holding it is replaced; nothing in
    backoff or queued runs afterwards (docs/cancellation.md)."""
    import json

    from click.testing import CliRunner

    from mfm_dist.cli.main import cli
    from mfm_dist.config import Duration, FixedBackoff
    from mfm_dist.verify import verify_run

    config = RunConfig(
        execution_mode=FanOutJoin(max_concurrency=4),
        retry_policy=RetryPolicy(max_attempts=3, backoff=FixedBackoff(delay=Duration(secs=30))),
    )
    retired_before = cluster.logs().count("retiring this pool process")
    run_id = submit_run("cancel_demo", {}, config, runtime=rt)
    deadline = time.monotonic() + 60

    def stuck_running_and_flaky_failed() -> bool:
        envelopes = events_of(rt, run_id)
        failed = any(
            isinstance(e.event, StateFailed) and "flaky" in str(e.state_id) for e in envelopes
        )
        entered = any(
            isinstance(e.event, StateEntered) and "stuck" in str(e.state_id) for e in envelopes
        )
        return failed and entered

    while not stuck_running_and_flaky_failed():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    asked = time.monotonic()
    out = CliRunner(env=cluster.env).invoke(
        cli, ["cancel", str(run_id), "--cluster", "--reason", "stop it", "--json"]
    )
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)
    assert row["phase"] == "Cancelled"
    assert time.monotonic() - asked < BOUND_S
    envelopes = events_of(rt, run_id)
    closed = [e.event for e in envelopes if isinstance(e.event, StateFailed)]
    assert [f.error.code for f in closed] == ["upstream_unavailable", "run_cancelled"]
    assert verify_run(rt.events, rt.artifacts, rt.registry, str(run_id)).ok
    deadline = time.monotonic() + 20
    while cluster.logs().count("retiring this pool process") <= retired_before:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)
    time.sleep(1.0)
    assert len(events_of(rt, run_id)) == len(envelopes)  # nothing after the end
    after = submit_run("hang_demo", {"hang_attempts": 0}, RunConfig(), runtime=rt)
    assert finished(cluster, after, rt).phase == RunPhase.COMPLETED
