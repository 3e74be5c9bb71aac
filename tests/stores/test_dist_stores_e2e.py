"""The engine on the distributed stores: real redis-server and a real S3-protocol server."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mfm_dist import FanOutJoin, RunConfig, RunPhase
from mfm_dist.cli.main import cli
from mfm_dist.errors import StorageError
from mfm_dist.events import StateCompleted
from mfm_dist.settings import Settings
from mfm_dist.stores.redis_events import RedisEventStore
from mfm_dist.stores.s3_artifacts import S3ArtifactStore
from mfm_dist.verify import verify_run
from support.engine_helpers import Harness, registry_with


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def test_cli_fanout_on_redis_and_s3_matches_embedded(
    redis_url: str, s3_artifacts_url: str, tmp_path: Path
) -> None:
    dist = ["--events-url", redis_url, "--artifacts-url", s3_artifacts_url]
    run = run_cli(
        *dist, "run", "fanout_demo", "--input", '{"items": 50}', "--fan-out", "8", "--json"
    )
    assert run.exit_code == 0, run.output
    import json

    dist_result = json.loads(run.stdout)
    local = run_cli("--home", str(tmp_path), "run", "fanout_demo", "--input", '{"items": 50}',
                    "--fan-out", "8", "--json")
    assert local.exit_code == 0, local.output
    assert json.loads(local.stdout)["final_snapshot_id"] == dist_result["final_snapshot_id"]
    verified = run_cli(*dist, "verify", dist_result["run_id"])
    assert verified.exit_code == 0, verified.output
    runs = run_cli(*dist, "runs", "--json")
    assert dist_result["run_id"] in runs.stdout


def slow_registry() -> Any:
    from support import slow_ops

    reg = registry_with()
    slow_ops.register_operations(reg)
    return reg


def completed_count(events: RedisEventStore, run_id: str) -> int:
    return sum(isinstance(e.event, StateCompleted) for e in events.read_range(run_id))  # type: ignore[arg-type]


def start_in_thread(
    h: Harness, cfg: RunConfig, run_input: dict[str, int]
) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = h.run("slow_fanout", run_input, cfg)
        except BaseException as exc:  # inspected by the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.slow
def test_s3_outage_mid_run_is_retryable_and_resume_completes(
    redis_url: str, s3_factory: Any
) -> None:
    server = s3_factory()
    server.create_bucket("outage")
    url = server.url_for("outage", "a") + "&read_timeout_s=1&connect_timeout_s=1&retries=1"
    artifacts = S3ArtifactStore.from_url(url, credentials=Settings.from_env().s3)
    events = RedisEventStore.from_url(redis_url)
    h = Harness(slow_registry(), events=events, artifacts=artifacts)
    cfg = RunConfig(execution_mode=FanOutJoin(max_concurrency=4))
    thread, outcome = start_in_thread(h, cfg, {"items": 40, "sleep_ms": 60})
    wait_for(
        lambda: events.list_runs() and completed_count(events, events.list_runs()[0].run_id) >= 5
    )
    run_id = events.list_runs()[0].run_id
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)  # the S3 server stops answering
    try:
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    error = outcome.get("error")
    assert isinstance(error, StorageError), outcome
    assert error.info.retryable, error.info
    before = events.read_range(run_id)
    result = h.engine().resume(run_id)
    assert result.phase == RunPhase.COMPLETED
    after = events.read_range(run_id)
    assert after[: len(before)] == before
    assert verify_run(events, artifacts, h.registry, run_id).ok


@pytest.mark.slow
def test_redis_restart_mid_run_with_aof_loses_nothing(
    redis_factory: Any, s3_artifacts_url: str
) -> None:
    server = redis_factory(appendonly=True, appendfsync="always")
    events = RedisEventStore.from_url(server.url)
    artifacts = S3ArtifactStore.from_url(s3_artifacts_url, credentials=Settings.from_env().s3)
    h = Harness(slow_registry(), events=events, artifacts=artifacts)
    cfg = RunConfig(execution_mode=FanOutJoin(max_concurrency=4))
    thread, outcome = start_in_thread(h, cfg, {"items": 40, "sleep_ms": 60})
    wait_for(
        lambda: events.list_runs() and completed_count(events, events.list_runs()[0].run_id) >= 5
    )
    run_id = events.list_runs()[0].run_id
    seen = events.read_range(run_id)
    server.restart(kill=True)  # SIGKILL: only what AOF fsynced survives
    thread.join(timeout=90)
    assert not thread.is_alive()
    after_restart = events.read_range(run_id)
    assert after_restart[: len(seen)] == seen  # every acknowledged append survived
    if "error" in outcome:  # the outage outlasted the store's bounded retries
        assert isinstance(outcome["error"], StorageError), outcome
        result = h.engine().resume(run_id)
    else:
        result = outcome["result"]
    assert result.phase == RunPhase.COMPLETED
    assert verify_run(events, artifacts, h.registry, run_id).ok
