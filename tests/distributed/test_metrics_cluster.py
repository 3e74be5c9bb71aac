"""Metrics and stock Celery monitoring on a real cluster (tests/support/cluster.py): every worker
exports Prometheus metrics (prefork children added up in multiprocess mode), scraped while
and after real runs; `celery inspect active_queues` shows the intended queue bindings; with
MFM_TASK_EVENTS=1 the workers send task events (what `celery events` and Flower read)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from mfm_dist.results import RunPhase
from support import REPO, TESTS
from support.cluster import LocalCluster
from support.servers import free_port
from workers.cancel import cancel_run
from workers.runtime import get_runtime
from workers.submit import wait_for_run

pytestmark = pytest.mark.slow

PORTS = {"control": free_port(), "attempts": free_port(), "submit": free_port()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("metrics-cluster")
    with LocalCluster(
        root,
        attempt_workers=0,
        extra_env={"MFM_TASK_EVENTS": "1"},
        control_env={"MFM_METRICS_PORT": str(PORTS["control"])},
    ) as c:
        prom = root / "attempts-prom"
        prom.mkdir()
        c.start_worker("attempts", "attempts", concurrency=2,
                       extra_env={"MFM_METRICS_PORT": str(PORTS["attempts"]),
                                  "PROMETHEUS_MULTIPROC_DIR": str(prom)})  # fmt: skip
        c.start_worker("submit", "submit", extra_env={"MFM_METRICS_PORT": str(PORTS["submit"])})
        c.activate()
        yield c


def scrape(kind: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{PORTS[kind]}/metrics", timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def total(name: str, **labels: str) -> float:
    """`name` summed over every worker and every series carrying `labels`."""
    found = 0.0
    for kind in PORTS:
        for (sample, series), value in scrape(kind).items():
            if sample == name and all(dict(series).get(k) == v for k, v in labels.items()):
                found += value
    return found


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Celery]:
    """A plain Celery client of this cluster (as any other system would submit): its own
    result-backend connection, not the one an earlier test's cluster left in `workers.app`."""
    app = Celery(broker=cluster.env["MFM_BROKER_URL"], backend=cluster.env["MFM_RESULT_BACKEND"])
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    yield app
    # Finalize the replies' AsyncResults (kept in reference cycles) while Redis is up: their
    # __del__ unsubscribes from the result backend.
    gc.collect()
    app.close()


def submit(client: Celery, **request: Any) -> dict[str, Any]:
    sent = client.send_task("mfm.submit", kwargs=request)
    reply: dict[str, Any] = sent.get(timeout=60)
    sent.forget()  # no longer pending in the client's backend (its __del__ needs Redis)
    return reply


def test_inspect_active_queues_shows_the_bindings(cluster: LocalCluster) -> None:
    env = {**os.environ, **cluster.env, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "inspect", "active_queues",
         "--json", "--timeout", "5"],
        env=env, cwd=REPO, capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    replies = json.loads(done.stdout)
    queues = {
        worker.split("@", 1)[0]: {q["name"]: q for q in bound} for worker, bound in replies.items()
    }
    assert {k: sorted(v) for k, v in queues.items()} == {
        "control": ["mfm.control"],
        "attempts": ["mfm.attempts"],
        "submit": ["celery", "mfm.submit"],
    }
    for bound in queues.values():
        for name, q in bound.items():  # each queue on its own direct exchange, by its name
            assert q["exchange"]["name"] == name and q["exchange"]["type"] == "direct"
            assert q["routing_key"] == name


def test_task_events_reach_a_monitor(cluster: LocalCluster, client: Celery) -> None:
    app = client
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    stop = threading.Event()

    def monitor() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": seen.append})
            ready.set()
            while not stop.is_set():
                try:
                    for _ in receiver.itercapture(limit=None, timeout=0.5, wakeup=True):
                        if stop.is_set():
                            return
                except TimeoutError:
                    continue

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    assert ready.wait(20)
    time.sleep(0.5)
    reply = submit(client, op="chain_demo", input={"states": 2})
    assert wait_for_run(reply["run_id"], 60).phase == RunPhase.COMPLETED
    # The chord's join (`mfm.advance`) is sent when its attempt task returns, which may be
    # after the run has completed (a carried attempt finishes the run inline): wait for it.
    wanted = {"mfm.submit", "mfm.advance", "mfm.execute_attempt"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if wanted <= {e.get("name") for e in list(seen) if e.get("type") == "task-received"}:
            break
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=10)
    kinds = {e.get("type") for e in seen}
    assert {"task-received", "task-started", "task-succeeded"} <= kinds, kinds
    received = {e.get("name") for e in seen if e.get("type") == "task-received"}
    assert {"mfm.submit", "mfm.advance", "mfm.execute_attempt"} <= received, received


def test_metrics_during_and_after_real_runs(
    cluster: LocalCluster, client: Celery, tmp_path: Path
) -> None:
    rt = get_runtime()
    fanout = submit(client, op="fanout_demo", input={"items": 6},
                    config={"execution_mode": {"FanOutJoin": {"max_concurrency": 3}}})  # fmt: skip
    retry = {"max_attempts": 2, "backoff": {"Fixed": {"delay": {"secs": 0, "nanos": 100_000_000}}}}
    flaky = submit(client, op="backoff_demo", input={}, config={"retry_policy": retry})
    refused = submit(client, op="no_such_op", input={})
    assert refused["error"]["code"] == "operation_not_found"
    gate = tmp_path / "gate"
    gate.mkdir()
    gated = submit(client, op="gated_demo", input={"items": 1, "gate_dir": str(gate)},
                   config={"execution_mode": {"FanOutJoin": {"max_concurrency": 4}}})  # fmt: skip
    for reply in (fanout, flaky):
        assert wait_for_run(reply["run_id"], 60).phase == RunPhase.COMPLETED

    # While a run is in flight: it is counted as started, not finished; its attempt runs.
    deadline = time.monotonic() + 30
    while not any(gate.glob("started-*")):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    assert total("mfm_runs_started_total", op="gated_demo") == 1
    assert total("mfm_runs_finished_total", op="gated_demo") == 0
    assert total("mfm_queue_depth", queue="mfm.attempts") == 0  # the broker was asked
    outcome = cancel_run(rt, gated["run_id"], "metrics test", "pytest")
    assert outcome.status != "finished"
    assert wait_for_run(gated["run_id"], 60).phase == RunPhase.CANCELLED
    # The cancelled attempt's lease was taken away: its worker notices (within TTL/3).
    deadline = time.monotonic() + 15
    while total("mfm_lease_losses_total") < 1:
        assert time.monotonic() < deadline, "the revoked lease was not noticed"
        time.sleep(0.2)
    (gate / "open").write_text("")

    for op in ("fanout_demo", "backoff_demo", "gated_demo"):
        assert total("mfm_runs_started_total", op=op) == 1, op
    assert total("mfm_submissions_accepted_total", outcome="created") >= 3
    assert total("mfm_submissions_rejected_total", code="operation_not_found") == 1
    assert total("mfm_runs_finished_total", op="fanout_demo", phase="Completed") == 1
    assert total("mfm_runs_finished_total", op="backoff_demo", phase="Completed") == 1
    assert total("mfm_runs_finished_total", op="gated_demo", phase="Cancelled") == 1
    # Attempts ran in two prefork children: the exporter adds both up.
    assert total("mfm_attempt_duration_seconds_count", op="fanout_demo", outcome="completed") == 7
    assert total("mfm_attempt_duration_seconds_count", op="backoff_demo", outcome="failed") == 1
    assert total("mfm_retries_total", op="backoff_demo") == 1
    assert total("mfm_retries_total", op="fanout_demo") == 0
    assert total("mfm_cancel_to_terminal_seconds_count", op="gated_demo") == 1
    assert total("mfm_coordinator_step_seconds_count") > 0
    assert total("mfm_orphan_recoveries_total") == 0
    # Each pool child wrote its own values; the main process exports their sum.
    main = cluster.workers["attempts"].proc.pid
    writers = {int(p.stem.rsplit("_", 1)[1]) for p in multiproc_dir(cluster).glob("*.db")}
    assert writers and main not in writers and set(writers) <= set(children_ever(cluster))


def multiproc_dir(cluster: LocalCluster) -> Path:
    return cluster.root / "attempts-prom"


def children_ever(cluster: LocalCluster) -> list[int]:
    """Pool children of the attempt worker, as its log names them (`ForkPoolWorker-N` pids
    are not logged: read the files' pids back from /proc when alive, else trust the log)."""
    return cluster.workers["attempts"].children() or [
        int(p.stem.rsplit("_", 1)[1]) for p in multiproc_dir(cluster).glob("*.db")
    ]
