"""Distributed execution end to end: real redis-server (AOF), a real S3 server (SeaweedFS) and
real Celery worker processes (docs/merge.md, docs/cluster.md)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mfm_dist
from mfm_dist.config import FanOutJoin, RetryPolicy, RunConfig
from mfm_dist.errors import InvalidInput
from mfm_dist.events import RunCompleted, StateCompleted, StateEntered, StateFailed
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.stores.urls import Stores
from mfm_dist.verify import verify_run
from support import TESTS
from support.cluster import LocalCluster
from support.cluster_checks import (
    WAIT_S,
    assert_clean_history,
    embedded_final,
    events_of,
    finished,
    gated_input,
    registry,
    slow_id,
    slow_started,
    wait_until,
)
from workers.factory import ADVANCE_TASK, ATTEMPT_TASK
from workers.runtime import Runtime, get_runtime
from workers.submit import submit_run

pytestmark = pytest.mark.slow

FAN16 = RunConfig(execution_mode=FanOutJoin(max_concurrency=16))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("cluster")
    with LocalCluster(root, attempt_workers=2) as c:
        c.activate()
        yield c


@pytest.fixture
def rt(cluster: LocalCluster) -> Runtime:
    return get_runtime()


# --- tests ------------------------------------------------------------------------------------


def test_fanout_200_states_matches_embedded_and_sequential(
    cluster: LocalCluster, rt: Runtime
) -> None:
    run_input = {"items": 199}
    run_id = submit_run("fanout_demo", run_input, FAN16, runtime=rt)
    result = finished(cluster, run_id, rt)
    assert result.phase == RunPhase.COMPLETED
    envelopes = events_of(rt, run_id)
    history = assert_clean_history(envelopes)
    assert len(history.states) == 200
    assert str(result.final_snapshot_id) == embedded_final("fanout_demo", run_input, FAN16)
    assert str(result.final_snapshot_id) == embedded_final("fanout_demo", run_input, RunConfig())
    report = verify_run(rt.events, rt.artifacts, registry(), str(run_id))
    assert report.ok, report.violations


def test_worker_killed_mid_attempt_recovers_without_user_action(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    run_input, gate = gated_input(tmp_path)
    run_id = submit_run("gated_demo", run_input, FAN16, runtime=rt)
    pid = slow_started(gate)
    assert any(pid in w.children() for w in cluster.workers.values())
    os.kill(pid, signal.SIGKILL)
    (gate / "open").write_text("")
    result = finished(cluster, run_id, rt)
    assert result.phase == RunPhase.COMPLETED
    envelopes = events_of(rt, run_id)
    assert_clean_history(envelopes)
    slow = slow_id(run_id, rt)
    failures = [
        e.event for e in envelopes if isinstance(e.event, StateFailed) and e.state_id == slow
    ]
    assert [f.error.code for f in failures] == ["orphan_attempt_recovered"]
    assert failures[0].failure_snapshot_id is None
    completed = [e for e in envelopes if isinstance(e.event, StateCompleted) and e.state_id == slow]
    assert [e.attempt for e in completed] == [1]
    assert str(result.final_snapshot_id) == embedded_final("gated_demo", run_input, FAN16)


def test_duplicate_attempt_deliveries_and_joins_leave_one_history(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    run_input, gate = gated_input(tmp_path)
    run_id = submit_run("gated_demo", run_input, FAN16, runtime=rt)
    slow_started(gate)
    slow = slow_id(run_id, rt)
    entered = next(
        e.event
        for e in events_of(rt, run_id)
        if isinstance(e.event, StateEntered) and str(e.event.state_id) == slow
    )
    started = events_of(rt, run_id)[0].event
    fingerprint = rt.coord.recorded_plan(str(run_id))
    assert fingerprint is not None
    kwargs = {
        "run_id": str(run_id),
        "manifest_id": str(started.manifest_id),  # type: ignore[union-attr]
        "state_id": slow,
        "attempt": 0,
        "base_snapshot_id": str(entered.base_snapshot_id),
        "plan_fingerprint": fingerprint,
    }
    copies = [rt.app.send_task(ATTEMPT_TASK, kwargs=kwargs) for _ in range(2)]
    joins = [rt.app.send_task(ADVANCE_TASK, args=(str(run_id),)) for _ in range(2)]
    assert [c.get(timeout=WAIT_S) for c in copies] == ["duplicate", "duplicate"]
    for j in joins:
        j.get(timeout=WAIT_S)
    (gate / "open").write_text("")
    result = finished(cluster, run_id, rt)
    assert result.phase == RunPhase.COMPLETED
    head = rt.events.head_seq(run_id)
    # Late deliveries after the run finished: the attempt again, a completed item, joins.
    item = f"{slow.rsplit('.', 1)[0]}.item_0000"
    item_entered = next(
        e.event
        for e in events_of(rt, run_id)
        if isinstance(e.event, StateEntered) and str(e.event.state_id) == item
    )
    late = [
        rt.app.send_task(ATTEMPT_TASK, kwargs=kwargs),
        rt.app.send_task(
            ATTEMPT_TASK,
            kwargs={
                **kwargs,
                "state_id": item,
                "base_snapshot_id": str(item_entered.base_snapshot_id),
            }
        ),
    ]
    assert [c.get(timeout=WAIT_S) for c in late] == ["duplicate", "duplicate"]
    joins = [rt.app.send_task(ADVANCE_TASK, args=(str(run_id),)) for _ in range(2)]
    assert [j.get(timeout=WAIT_S) for j in joins] == [
        "finished",
        "finished",
    ]
    envelopes = events_of(rt, run_id)
    assert len(envelopes) == head
    assert_clean_history(envelopes)


def test_control_worker_killed_and_restarted(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    run_input, gate = gated_input(tmp_path)
    run_id = submit_run("gated_demo", run_input, FAN16, runtime=rt)
    slow_started(gate)
    control = next(n for n in cluster.workers if n.startswith("control"))
    cluster.stop_worker(control, kill=True)
    (gate / "open").write_text("")
    # No control worker: the attempt that ends takes the run's next steps itself (inline
    # continuation), so the run finishes anyway; the control worker comes back after.
    result = finished(cluster, run_id, rt)
    cluster.start_worker("control")
    assert result.phase == RunPhase.COMPLETED
    assert_clean_history(events_of(rt, run_id))


def test_redis_restart_and_s3_outage_mid_run(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    run_input, gate = gated_input(tmp_path)
    run_id = submit_run("gated_demo", run_input, FAN16, runtime=rt)
    slow_started(gate)
    before = events_of(rt, run_id)
    cluster.restart_redis(kill=True)  # a crash: AOF with appendfsync always keeps everything
    assert cluster.s3_proxy is not None
    cluster.s3_proxy.disable()
    try:
        (gate / "open").write_text("")
        time.sleep(4.0)  # the attempt finishes its handler while S3 is unreachable
    finally:
        cluster.s3_proxy.enable()
    result = finished(cluster, run_id, rt)
    assert result.phase == RunPhase.COMPLETED
    after = events_of(rt, run_id)
    assert [e.model_dump() for e in after[: len(before)]] == [e.model_dump() for e in before]
    assert_clean_history(after)
    assert str(result.final_snapshot_id) == embedded_final("gated_demo", run_input, FAN16)


def test_plan_mismatch_on_a_worker_with_changed_code(cluster: LocalCluster, rt: Runtime) -> None:
    normal = cluster.attempt_worker_names()
    for name in normal:
        cluster.stop_worker(name)
    variant = cluster.start_worker("attempts", extra_env={"MFM_TEST_PLAN_VARIANT": "1"})
    try:
        config = RunConfig(retry_policy=RetryPolicy(max_attempts=3))
        run_id = submit_run("shape_demo", {}, config, runtime=rt)
        result = finished(cluster, run_id, rt)
        assert result.phase == RunPhase.FAILED
        assert result.error is not None and result.error.code == "plan_mismatch"
        envelopes = events_of(rt, run_id)
        failed = [e.event for e in envelopes if isinstance(e.event, StateFailed)]
        assert [f.error.code for f in failed] == ["plan_mismatch"]  # never retried
        assert not failed[0].error.retryable
        assert not any(isinstance(e.event, StateCompleted) for e in envelopes)
        last = envelopes[-1].event
        assert isinstance(last, RunCompleted) and last.status.value == "Failed"
    finally:
        cluster.stop_worker(variant.name)
        for _ in normal:
            cluster.start_worker("attempts")


def test_cli_submit_and_inspect_on_the_cluster(cluster: LocalCluster, rt: Runtime) -> None:
    """`mfm submit --wait` runs on the workers; `mfm status`/`verify` read the same stores."""
    import json

    from click.testing import CliRunner

    from mfm_dist.cli.main import cli

    runner = CliRunner(env=cluster.env)  # the settings the CLI reads at its start
    submitted = runner.invoke(
        cli,
        ["submit", "fanout_demo", "--input", '{"items": 24}', "--fan-out", "6", "--wait",
         "--timeout", "120", "--json"],
    )
    assert submitted.exit_code == 0, submitted.output
    result = RunResult.model_validate_json(submitted.stdout)
    assert result.phase == RunPhase.COMPLETED
    assert result.final_snapshot_id == embedded_final("fanout_demo", {"items": 24}, FAN16)
    verified = runner.invoke(cli, ["verify", str(result.run_id)])
    assert verified.exit_code == 0, verified.output
    status = runner.invoke(cli, ["status", str(result.run_id), "--json"])
    assert json.loads(status.stdout)["counts"]["completed"] == 25
    fire_and_forget = runner.invoke(
        cli, ["submit", "chain_demo", "--input", '{"states": 3}', "--json"]
    )
    assert fire_and_forget.exit_code == 0, fire_and_forget.output
    run_id = json.loads(fire_and_forget.stdout)["run_id"]
    assert finished(cluster, RunId(run_id), rt).phase == RunPhase.COMPLETED


def test_two_concurrent_cluster_resumes_leave_one_history(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    """Two `mfm resume --cluster` at once while an attempt is in flight: one valid history."""
    import threading

    from click.testing import CliRunner

    from mfm_dist.cli.main import cli

    run_input, gate = gated_input(tmp_path)
    run_id = submit_run("gated_demo", run_input, FAN16, runtime=rt)
    slow_started(gate)
    outputs: list[int] = []

    def resume() -> None:
        res = CliRunner(env=cluster.env).invoke(
            cli, ["resume", str(run_id), "--cluster", "--wait", "--timeout", "120", "--json"]
        )
        outputs.append(res.exit_code)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    (gate / "open").write_text("")
    for t in threads:
        t.join(timeout=WAIT_S)
    assert outputs == [0, 0]
    envelopes = events_of(rt, run_id)
    assert_clean_history(envelopes)
    assert sum(isinstance(e.event, RunCompleted) for e in envelopes) == 1
    assert verify_run(rt.events, rt.artifacts, registry(), str(run_id)).ok


def test_cli_run_backend_celery_follow_detach_and_status_why(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    """`mfm run --backend celery` follows the run to its end; `--detach` returns the id;
    `mfm status` names the worker running an attempt and its lease expiry."""
    import json

    from click.testing import CliRunner

    from mfm_dist.cli.main import cli

    runner = CliRunner(env=cluster.env)  # the settings the CLI reads at its start
    followed = runner.invoke(
        cli,
        ["--ops", "support.dist_ops", "run", "fanout_demo", "--input", '{"items": 10}',
         "--fan-out", "4", "--backend", "celery", "--timeout", "120", "--json"],
    )
    assert followed.exit_code == 0, followed.output
    assert RunResult.model_validate_json(followed.stdout).phase == RunPhase.COMPLETED

    run_input, gate = gated_input(tmp_path)
    detached = runner.invoke(
        cli,
        ["--ops", "support.dist_ops", "run", "gated_demo", "--input", json.dumps(run_input),
         "--fan-out", "8", "--backend", "celery", "--detach", "--json"],
    )
    assert detached.exit_code == 0, detached.output
    run_id = json.loads(detached.stdout)["run_id"]
    pid = slow_started(gate)
    wait_until(  # every item done, so `slow` is the one state the join waits on
        lambda: sum(isinstance(e.event, StateCompleted) for e in events_of(rt, RunId(run_id)))
        >= run_input["items"],  # type: ignore[operator]
        "the items to complete",
    )
    status = runner.invoke(cli, ["--ops", "support.dist_ops", "status", run_id, "--json"])
    report = json.loads(status.stdout)
    slow = next(s for s in report["states"] if s["state_id"].endswith(".slow"))
    assert slow["status"] == "running"
    assert slow["worker"].endswith(f":{pid}") and slow["lease_expires_ms"] > slow["since_ms"]
    join = next(s for s in report["states"] if s["state_id"].endswith(".join"))
    assert join["status"] == "pending" and join["waiting_on"] == slow["state_id"]
    (gate / "open").write_text("")
    assert finished(cluster, RunId(run_id), rt).phase == RunPhase.COMPLETED


def test_mfm_worker_command_starts_a_configured_worker(cluster: LocalCluster) -> None:
    import subprocess
    import sys

    script = Path(sys.executable).with_name("mfm")
    proc = subprocess.Popen(
        [str(script), "worker", "--queues", "attempts", "-c", "1", "--loglevel", "INFO"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            **cluster.env,
            "MFM_OPERATIONS": "support.dist_ops",
            "PYTHONPATH": str(TESTS),
        },
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            lines.append(line)
            if "ready." in line:
                break
        text = "".join(lines)
        assert "ready." in text, text
        assert "mfm.attempts" in text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_plain_resume_refuses_a_cluster_run(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    """Executing a cluster-submitted run in the CLI process would run attempts without
    leases; plain `mfm resume` refuses and points to --cluster."""
    from click.testing import CliRunner

    from mfm_dist.cli.main import cli

    run_input, gate = gated_input(tmp_path)
    run_id = submit_run("gated_demo", run_input, FAN16, runtime=rt)
    slow_started(gate)
    refused = CliRunner(env=cluster.env).invoke(
        cli, ["--ops", "support.dist_ops", "resume", str(run_id)]
    )
    assert refused.exit_code == 2
    assert "error[run_managed_by_cluster]" in refused.output
    (gate / "open").write_text("")
    assert finished(cluster, run_id, rt).phase == RunPhase.COMPLETED
    assert_clean_history(events_of(rt, run_id))


def test_forced_resume_is_refused_while_a_worker_holds_a_live_lease(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    """`--force` takes over a run whose workers are gone — never one whose attempt is still
    running (it would run twice, concurrently, and again after an orphan recovery)."""
    from click.testing import CliRunner

    from mfm_dist.cli.main import cli

    run_input, gate = gated_input(tmp_path)
    run_id = submit_run("gated_demo", run_input, FAN16, runtime=rt)
    slow_started(gate)
    wait_until(  # every item done: `slow` is the one attempt still running
        lambda: sum(isinstance(e.event, StateCompleted) for e in events_of(rt, run_id))
        >= run_input["items"],  # type: ignore[operator]
        "the items to complete",
    )
    refused = CliRunner(env=cluster.env).invoke(
        cli, ["--ops", "support.dist_ops", "resume", str(run_id), "--force"]
    )
    assert refused.exit_code == 2, refused.output
    assert "error[attempt_lease_live]" in refused.output and ".slow attempt 0 on " in refused.output
    # The one-call Python API refuses alike (it used to close the live attempt as an orphan).
    stores = Stores(events=rt.events, artifacts=rt.artifacts)
    for force, code in [(False, "run_managed_by_cluster"), (True, "attempt_lease_live")]:
        with pytest.raises(InvalidInput) as info:
            mfm_dist.resume(str(run_id), stores=stores, registry=rt.registry, force=force)
        assert info.value.code == code
    (gate / "open").write_text("")
    assert finished(cluster, run_id, rt).phase == RunPhase.COMPLETED
    history = assert_clean_history(events_of(rt, run_id))
    assert not any(isinstance(e.event, StateFailed) for e in history.envelopes)
    assert len(list(gate.glob("started-*"))) == 1  # the slow handler ran exactly once
