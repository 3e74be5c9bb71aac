"""The dashboard's JSON API on the distributed stores (a real redis-server, the in-process
worker harness): the same shapes as the CLI, the lease holder of a running attempt, and the
worker of every attempt in the timeline."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mfm_dist.config import Duration, FixedBackoff, RetryPolicy, RunConfig
from support.ui_helpers import dashboard_for, mfm, mfm_json, serve_dashboard, wait_for
from support.worker_harness import Harness
from workers.outcomes import AttemptOutcome, StepKind, StepOutcome
from workers.runtime import reset_runtime
from workers.submit import receive


@pytest.fixture(autouse=True)
def _fresh_runtime() -> Iterator[None]:
    reset_runtime()
    yield
    reset_runtime()


def submit(h: Harness, delivery: str, **request: Any) -> str:
    reply = receive(h.rt, (), request, delivery)
    assert "run_id" in reply, reply
    return str(reply["run_id"])


def drive(h: Harness, rid: str) -> None:
    """Advance and run attempts until the run finishes (waiting out retry backoffs)."""

    def step() -> bool:
        if h.coordinator.advance(rid) == StepOutcome.FINISHED:
            return True
        for task in h.dispatcher.take():
            h.run(task)
        return False

    wait_for(step, f"run {rid} to finish", poll_s=0.02)


def api(url: str, status: int = 200) -> Any:
    response = httpx.get(url, timeout=30)
    assert response.status_code == status, response.text
    return response.json()


def test_api_on_the_cluster_stores(h: Harness, tmp_path: Path) -> None:
    fanout = submit(h, "a", op="fanout_demo", input={"items": 3}, labels={"team": "data"})
    h.drive(fanout)
    config = RunConfig(
        retry_policy=RetryPolicy(
            max_attempts=2, backoff=FixedBackoff(delay=Duration.from_millis(50))
        )
    )
    retried = submit(h, "b", op="backoff_demo", input={},
                     config=config.model_dump(mode="json"))  # fmt: skip
    drive(h, retried)
    gate = tmp_path / "gate"
    gate.mkdir()
    gated = submit(h, "c", op="gated_demo", input={"items": 2, "gate_dir": str(gate)},
                   config={"execution_mode": {"FanOutJoin": {"max_concurrency": 4}}})  # fmt: skip
    me = f"{socket.gethostname()}:{os.getpid()}"

    dashboard = dashboard_for(
        events_url=os.environ["MFM_EVENTS_URL"], artifacts_url=os.environ["MFM_ARTIFACTS_URL"]
    )
    with serve_dashboard(dashboard) as url:
        # A run with an attempt in flight: the lease names its holder.
        assert h.coordinator.advance(gated).kind is StepKind.DISPATCHED
        tasks = h.dispatcher.take()
        slow = next((t for t in tasks if t.state_id.endswith(".slow")), None)
        assert slow is not None, [t.state_id for t in tasks]
        for t in tasks:
            if t is not slow:
                assert h.run(t) == AttemptOutcome.COMPLETED
        worker = threading.Thread(target=h.run, args=(slow,))
        worker.start()
        try:
            wait_for(lambda: any(gate.glob("started-*")), "the slow attempt to start")
            status = api(f"{url}/api/runs/{gated}")
            slow_row = next(s for s in status["states"] if s["state_id"].endswith(".slow"))
            assert slow_row["status"] == "running" and slow_row["worker"] == me
            assert f"running on {me}" in slow_row["detail"]
            assert status["driver"] is None and status["interrupted"] is False
            live = api(f"{url}/api/runs/{gated}/live")
            assert live["phase"] == "Running" and live["statuses"] == "CCRP"
            page = httpx.get(f"{url}/runs/{gated}", timeout=30)
            assert page.status_code == 200 and 'data-phase="Running"' in page.text
        finally:
            (gate / "open").write_text("")
            worker.join(timeout=30)
        drive(h, gated)

        assert api(f"{url}/api/runs") == mfm_json([], "runs", "--json")
        assert [r["run_id"] for r in api(f"{url}/api/runs?label=team%3Ddata")] == [fanout]
        assert [r["run_id"] for r in api(f"{url}/api/runs?op=backoff_demo")] == [retried]
        for rid in (fanout, retried, gated):
            assert api(f"{url}/api/runs/{rid}") == mfm_json([], "status", rid, "--json")
            lines = mfm([], "events", rid, "--json").stdout.splitlines()
            assert api(f"{url}/api/runs/{rid}/events?limit=500") == [json.loads(x) for x in lines]
            assert api(f"{url}/api/runs/{rid}/verify") == mfm_json([], "verify", rid, "--json")
            assert api(f"{url}/api/runs/{rid}/replay") == mfm_json([], "replay", rid, "--json")
            assert api(f"{url}/api/runs/{rid}/context") == mfm_json([], "context", rid)
            assert api(f"{url}/api/runs/{rid[:10]}/live")["phase"] == "Completed"

        # Who ran what, after the fact: the holder record of every attempt.
        timeline = api(f"{url}/api/runs/{retried}/attempts")["attempts"]
        assert [(a["attempt"], a["outcome"], a["worker"]) for a in timeline] == [
            (0, "failed", me),
            (1, "completed", me),
        ]
        assert timeline[0]["retry_at_ms"] == timeline[0]["closed_ms"] + 50
        detail = api(f"{url}/api/runs/{retried}/states/flaky")
        assert [a["worker"] for a in detail["attempts"]] == [me, me]
        assert detail["delta"]["writes"] == {"ok": 1}
        assert api(f"{url}/api/backfills") == []
        assert "mfm_runs_running 0.0" in httpx.get(f"{url}/metrics", timeout=30).text
