"""The submission contract from a client that imports nothing of ours (`foreign_client.py`,
run as a separate process), against a real cluster: redis-server, S3, a control worker, a
submission worker (`-Q mfm.submit,celery -c 2`) and attempt workers (docs/submission.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase
from support import TESTS
from support.cluster import LocalCluster
from support.cluster_checks import assert_clean_history, events_of, gated_input, slow_started
from workers.runtime import Runtime, get_runtime
from workers.submit import wait_for_run

pytestmark = pytest.mark.slow

CLIENT = TESTS / "support" / "foreign_client.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("submit-cluster")
    with LocalCluster(root, attempt_workers=2) as c:
        c.start_worker("submit", "submit")
        c.activate()
        yield c


@pytest.fixture
def rt(cluster: LocalCluster) -> Runtime:
    return get_runtime()


def client(cluster: LocalCluster, command: str, payload: Any) -> Any:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MFM_") and k != "PYTHONPATH"
    }
    env["BROKER_URL"] = cluster.redis.url_for_db(1)
    env["RESULT_URL"] = cluster.redis.url_for_db(2)
    done = subprocess.run(
        [sys.executable, str(CLIENT), command, json.dumps(payload)],
        env=env,
        capture_output=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:] + cluster.logs()
    return json.loads(done.stdout)


def test_default_routing_starts_a_run_and_the_reply_is_json(
    cluster: LocalCluster, rt: Runtime
) -> None:
    reply = client(cluster, "send-task", {"op": "chain_demo", "input": {"states": 2}})
    assert reply["outcome"] == "created" and set(reply) == {"run_id", "outcome"}
    result = wait_for_run(reply["run_id"], 60, runtime=rt)
    assert result.phase == RunPhase.COMPLETED


def test_a_hand_built_protocol_message_is_served_like_any_other(
    cluster: LocalCluster, rt: Runtime
) -> None:
    reply = client(
        cluster, "raw-push", {"op": "fanout_demo", "input": {"items": 3}, "labels": {"via": "go"}}
    )
    assert reply["outcome"] == "created"
    assert wait_for_run(reply["run_id"], 60, runtime=rt).phase == RunPhase.COMPLETED
    refused = client(cluster, "raw-push", {"op": "fanout_demo", "bogus": True})
    assert refused["error"]["code"] == "submission_unknown_field"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"input": {"states": 1}}, "submission_invalid"),
        ({"op": "no_such_op"}, "operation_not_found"),
        ({"op": "chain_demo", "input": {"x": 0.5}}, "float_not_allowed"),
        ({"op": "chain_demo", "input": {"token": "Bearer abc"}}, "secrets_detected"),
        ({"op": "chain_demo", "queue_name": "x"}, "submission_unknown_field"),
        ({"op": "chain_demo", "config": {"io_mode": "Sideways"}}, "submission_invalid"),
    ],
)
def test_malformed_payloads_get_structured_errors(
    cluster: LocalCluster, payload: dict[str, Any], code: str
) -> None:
    reply = client(cluster, "send-task", payload)
    assert reply == {"error": reply["error"]} and reply["error"]["code"] == code
    assert "Traceback" not in cluster.logs()


def test_pickled_message_gets_a_structured_refusal_not_silence(cluster: LocalCluster) -> None:
    reply = client(cluster, "pickle", {"op": "chain_demo"})
    assert reply["error"]["code"] == "submission_content_disallowed"


def test_idempotency_keys_from_another_language(cluster: LocalCluster, rt: Runtime) -> None:
    base = {"op": "chain_demo", "input": {"states": 1}, "idempotency_key": "invoice-7"}
    first = client(cluster, "send-task", base)
    again = client(cluster, "raw-push", base)
    assert first["outcome"] == "created"
    assert again == {"run_id": first["run_id"], "outcome": "existing"}
    conflict = client(cluster, "send-task", {**base, "input": {"states": 2}})
    assert conflict["error"]["code"] == "idempotency_conflict"
    batch = client(cluster, "send-batch", [base, {"op": "chain_demo", "idempotency_key": "x1"}])
    assert [r["outcome"] for r in batch["replies"]] == ["existing", "created"]


def test_each_exchange_binds_exactly_its_own_queue(cluster: LocalCluster) -> None:
    """Publishing by exchange and routing key reaches one queue, never two."""
    import redis

    broker = redis.Redis.from_url(cluster.redis.url_for_db(1))
    for name in ("mfm.control", "mfm.attempts", "mfm.submit", "celery"):
        members = broker.smembers(f"_kombu.binding.{name}")
        queues = {os.fsdecode(m).split("\x06\x16")[-1] for m in members}
        assert queues == {name}, (name, queues)


def test_concurrent_deliveries_of_one_key_on_two_worker_processes_start_one_run(
    cluster: LocalCluster, rt: Runtime
) -> None:
    payload = {"op": "chain_demo", "input": {"states": 1}, "idempotency_key": "twice"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(CLIENT), "send-task", json.dumps(payload)],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("MFM_")},
                "BROKER_URL": cluster.redis.url_for_db(1),
                "RESULT_URL": cluster.redis.url_for_db(2),
            },
            stdout=subprocess.PIPE,
            cwd="/",
        )
        for _ in range(2)
    ]
    replies = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert len({r["run_id"] for r in replies}) == 1
    assert sorted(r["outcome"] for r in replies) == ["created", "existing"]
    run_ids = [str(s.run_id) for s in rt.events.list_runs(limit=1000)]
    assert run_ids.count(replies[0]["run_id"]) == 1


def test_submission_worker_killed_mid_acceptance_yields_one_run(
    cluster: LocalCluster, rt: Runtime
) -> None:
    """The S3 store hangs while a keyless submission is being accepted; the pool child is
    SIGKILLed; Celery redelivers the message: the same delivery id names the same run."""
    assert cluster.s3_proxy is not None
    before = {str(s.run_id) for s in rt.events.list_runs(limit=1000)}
    cluster.s3_proxy.stall()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MFM_")},
        "BROKER_URL": cluster.redis.url_for_db(1),
        "RESULT_URL": cluster.redis.url_for_db(2),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            str(CLIENT),
            "send-task",
            json.dumps({"op": "chain_demo", "input": {"states": 1}}),
        ],
        env=env,
        stdout=subprocess.PIPE,
        cwd="/",
    )
    try:
        time.sleep(2.0)  # the submission is inside accept(), waiting on S3
        for child in cluster.workers["submit"].children():
            os.kill(child, signal.SIGKILL)
    finally:
        cluster.s3_proxy.resume()
    reply = json.loads(proc.communicate(timeout=120)[0])
    assert reply.get("outcome") in ("created", "existing"), reply
    after = {str(s.run_id) for s in rt.events.list_runs(limit=1000)} - before
    assert after == {reply["run_id"]}
    assert wait_for_run(reply["run_id"], 60, runtime=rt).phase == RunPhase.COMPLETED


def test_on_complete_fires_once_even_when_the_control_worker_dies_at_the_end(
    cluster: LocalCluster, rt: Runtime, tmp_path: Path
) -> None:
    import redis

    run_input, gate = gated_input(tmp_path, items=2)
    reply = client(
        cluster,
        "send-task",
        {
            "op": "gated_demo",
            "input": run_input,
            "config": {"execution_mode": {"FanOutJoin": {"max_concurrency": 4}}},
            "labels": {"team": "billing"},
            "on_complete": {"task": "billing.run_finished", "queue": "billing.callbacks"},
        },
    )
    slow_started(gate)
    (gate / "open").write_text("")
    time.sleep(0.3)
    control = next(n for n in cluster.workers if n.startswith("control"))
    cluster.stop_worker(control, kill=True)  # around completion: join, RunCompleted, callback
    cluster.start_worker("control")
    result = wait_for_run(reply["run_id"], 60, runtime=rt)
    assert result.phase == RunPhase.COMPLETED
    assert_clean_history(events_of(rt, RunId(reply["run_id"])))
    broker = redis.Redis.from_url(cluster.redis.url_for_db(1))
    deadline = time.monotonic() + 30
    while broker.llen("billing.callbacks") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a duplicate would arrive by now
    messages = [json.loads(m) for m in broker.lrange("billing.callbacks", 0, -1)]
    assert len(messages) == 1, messages
    headers = messages[0]["headers"]
    assert headers["task"] == "billing.run_finished"
    assert headers["id"] == f"mfm-complete-{reply['run_id']}"
    import base64

    args, _, _ = json.loads(base64.b64decode(messages[0]["body"]))
    assert args[0]["run_id"] == reply["run_id"] and args[0]["phase"] == "Completed"
    assert args[0]["labels"] == {"team": "billing"}


def test_secret_shaped_input_is_refused_and_echoed_nowhere(
    cluster: LocalCluster, rt: Runtime
) -> None:
    import redis

    marker = "zebra quartz violin meadow oxygen lantern pepper canyon orbit tulip walnut ember"
    reply = client(cluster, "send-task", {"op": "chain_demo", "input": {"note": marker}})
    assert reply["error"]["code"] == "secrets_detected"
    time.sleep(0.5)
    for db in (0, 1, 2):
        r = redis.Redis.from_url(cluster.redis.url_for_db(db))
        for key in r.scan_iter():
            assert b"zebra" not in (r.dump(key) or b""), (db, key)
    assert "zebra" not in cluster.logs()


def test_runs_progress_by_inline_continuation_without_a_control_worker(
    cluster: LocalCluster, rt: Runtime
) -> None:
    """The submission worker takes a new run's first step and each attempt worker the step
    after its attempt: no `advance` message is needed on the way (the control worker only
    serves timers and joins)."""
    control = next(n for n in cluster.workers if n.startswith("control"))
    cluster.stop_worker(control)
    try:
        reply = client(
            cluster,
            "send-task",
            {
                "op": "fanout_demo",
                "input": {"items": 6},
                "config": {"execution_mode": {"FanOutJoin": {"max_concurrency": 2}}},
            },
        )
        chain = client(cluster, "send-task", {"op": "chain_demo", "input": {"states": 8}})
        for run in (reply, chain):
            assert wait_for_run(run["run_id"], 60, runtime=rt).phase == RunPhase.COMPLETED
    finally:
        cluster.start_worker("control")
