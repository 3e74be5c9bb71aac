"""The submission contract (docs/submission.md), in process: the real `receive`/`accept`
code and the real coordinator against a real redis-server (the harness of
`worker_harness`). The cross-language client on a real cluster is in
`test_submission_client.py`."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import submission_of
from mfm_dist.ids import RunId
from mfm_dist.stores.redis_keys import run_key
from mfm_dist.submission import completion_task_id, parse_request, submit_schema
from support import REPO
from support.worker_harness import Harness, completed_status
from workers import submission_log
from workers.outcomes import StepOutcome
from workers.submit import receive, receive_batch

OK = {"op": "chain_demo", "input": {"states": 2}}


def send(h: Harness, delivery: str | None = "task-1", *args: Any, **kwargs: Any) -> dict[str, Any]:
    return receive(h.rt, args, kwargs, delivery)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"input": {}}, "submission_invalid"),  # no op
        ({"op": "no_such_op"}, "operation_not_found"),
        ({"op": "chain_demo", "input": {"x": 1.5}}, "float_not_allowed"),
        ({"op": "chain_demo", "input": {"password": "hunter2"}}, "secrets_detected"),
        ({"op": "chain_demo", "priority": 3}, "submission_unknown_field"),
        ({"op": "chain_demo", "config": {"execution_mode": "Parallel"}}, "submission_invalid"),
        (
            {"op": "chain_demo", "config": {"retry_policy": {"max_attempts": -1}}},
            "submission_invalid",
        ),
        ({"op": "chain_demo", "v": 2}, "submission_version_unsupported"),
        ({"op": "chain_demo", "labels": {"Team": "x"}}, "submission_invalid"),
        ({"op": "chain_demo", "labels": {"team": "api_key=1"}}, "secrets_detected"),
        ({"op": "chain_demo", "on_complete": {"task": "x y", "queue": "q"}}, "submission_invalid"),
        ({"op": "chain_demo", "input": {"states": 2}, "idempotency_key": ""}, "submission_invalid"),
    ],
)
def test_malformed_submissions_get_a_structured_error_and_store_nothing(
    h: Harness, payload: dict[str, Any], code: str
) -> None:
    reply = send(h, "bad-1", **payload)
    assert set(reply) == {"error"}
    error = reply["error"]
    assert error["code"] == code, error
    assert set(error) == {"code", "category", "retryable", "message"}
    assert error["retryable"] is False
    for value in ("hunter2", "api_key=1", "1.5", "Parallel"):
        assert value not in json.dumps(reply)
    assert list(h.rt.events.list_runs()) == []
    assert h.rt.redis.zcard("mfm:timers") == 0
    rows = submission_log.recent_rejections(h.rt.redis)
    assert [(r.code, r.delivery_id) for r in rows] == [(code, "bad-1")]
    assert submission_log.counts(h.rt.redis) == {f"rejected:{code}": 1}


def test_unknown_positional_forms_and_the_legacy_form(h: Harness) -> None:
    legacy = receive(h.rt, ("chain_demo", {"states": 1}, {}), {}, "legacy-1")
    assert legacy["outcome"] == "created"
    as_object = receive(h.rt, (dict(OK),), {}, "object-1")
    assert as_object["outcome"] == "created"
    mixed = receive(h.rt, ("chain_demo",), {"op": "chain_demo"}, "mixed-1")
    assert mixed["error"]["code"] == "submission_invalid"


def test_same_key_twice_is_one_run_and_a_different_payload_is_a_conflict(h: Harness) -> None:
    first = send(h, "t1", **OK, idempotency_key="order-42")
    again = send(h, "t2", **OK, idempotency_key="order-42")
    assert first == {"run_id": first["run_id"], "outcome": "created"}
    assert again == {"run_id": first["run_id"], "outcome": "existing"}
    other = send(h, "t3", **{**OK, "input": {"states": 3}}, idempotency_key="order-42")
    assert other["error"]["code"] == "idempotency_conflict"
    config = send(h, "t4", **OK, config={"event_profile": "Minimal"}, idempotency_key="order-42")
    assert config["error"]["code"] == "idempotency_conflict"
    # Keys are scoped per op: the same key for another op is another run.
    fan = send(h, "t5", op="fanout_demo", input={"items": 2}, idempotency_key="order-42")
    assert fan["outcome"] == "created" and fan["run_id"] != first["run_id"]
    assert len(list(h.rt.events.list_runs())) == 2


def test_same_key_with_other_labels_or_callback_is_a_conflict_not_a_silent_repeat(
    h: Harness,
) -> None:
    """Labels and `on_complete` are part of the request: a repeat that changes them would
    otherwise be told `existing` while its labels and callback are silently dropped."""
    callback = {"task": "orders.done", "queue": "orders"}
    first = send(h, "t1", **OK, idempotency_key="k", labels={"team": "a"}, on_complete=callback)
    same = send(h, "t2", **OK, idempotency_key="k", labels={"team": "a"}, on_complete=callback)
    assert same == {"run_id": first["run_id"], "outcome": "existing"}
    for delivery, changed in [
        ("t3", {"labels": {"team": "b"}, "on_complete": callback}),
        ("t4", {"labels": {}, "on_complete": callback}),
        ("t5", {"labels": {"team": "a"}, "on_complete": {**callback, "queue": "other"}}),
        ("t6", {"labels": {"team": "a"}}),
    ]:
        reply = send(h, delivery, **OK, idempotency_key="k", **changed)
        assert reply["error"]["code"] == "idempotency_conflict", delivery
    assert len(list(h.rt.events.list_runs())) == 1


def test_key_survives_the_end_of_the_run_and_any_dedup_window(h: Harness) -> None:
    first = send(h, "t1", **OK, idempotency_key="k")
    h.drive(first["run_id"])
    h.rt.redis.delete(*h.rt.redis.keys("mfm:submissions:*"))
    again = send(h, "t9", **OK, idempotency_key="k")
    assert again == {"run_id": first["run_id"], "outcome": "existing"}


def test_without_a_key_one_run_per_delivered_message(h: Harness) -> None:
    first = send(h, "task-A", **OK)
    redelivered = send(h, "task-A", **OK)
    assert redelivered == {"run_id": first["run_id"], "outcome": "existing"}
    other = send(h, "task-B", **OK)
    assert other["outcome"] == "created" and other["run_id"] != first["run_id"]
    reused = send(h, "task-A", **{**OK, "input": {"states": 5}})
    assert reused["error"]["code"] == "idempotency_conflict"


def test_two_concurrent_deliveries_of_one_key_start_one_run(h: Harness) -> None:
    from workers.runtime import Runtime

    replies: list[dict[str, Any]] = []
    barrier = threading.Barrier(4)

    def deliver(n: int) -> None:
        rt = Runtime.from_env()  # each "worker" with its own connections
        try:
            barrier.wait()
            replies.append(receive(rt, (), {**OK, "idempotency_key": "race"}, f"d{n}"))
        finally:
            rt.close()

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r["run_id"] for r in replies}) == 1
    assert sorted(r["outcome"] for r in replies) == ["created", "existing", "existing", "existing"]
    assert len(list(h.rt.events.list_runs())) == 1
    history = RunHistory.load(h.rt.events, RunId(replies[0]["run_id"]))
    assert [type(e.event).__name__ for e in history.envelopes] == ["RunStarted", "DomainEvent"]


def test_labels_and_callback_are_kept_with_the_run_not_in_the_manifest(h: Harness) -> None:
    plain = send(h, "a", **OK, idempotency_key="p")
    labelled = send(
        h,
        "b",
        **OK,
        idempotency_key="q",
        labels={"team": "data", "partition": "2026-01-01"},
        on_complete={"task": "billing.run_done", "queue": "billing"},
    )
    history = RunHistory.load(h.rt.events, RunId(labelled["run_id"]))
    record = submission_of(history.envelopes)
    assert record is not None and record.labels == {"partition": "2026-01-01", "team": "data"}
    assert record.on_complete is not None and record.on_complete.task == "billing.run_done"
    plain_history = RunHistory.load(h.rt.events, RunId(plain["run_id"]))
    assert plain_history.started.manifest_id == history.started.manifest_id


def test_on_complete_fires_once_per_run_even_if_the_coordinator_dies_around_it(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = send(h, "cb", **OK, labels={"team": "x"}, on_complete={"task": "done", "queue": "q"})
    rid = reply["run_id"]
    real_send = h.dispatcher.send_callback

    def die(*_: Any) -> None:
        raise SystemExit("the control worker died right after RunCompleted")

    monkeypatch.setattr(h.dispatcher, "send_callback", die)
    with pytest.raises(SystemExit):
        h.drive(rid)
    assert completed_status(h, rid) == "Completed"
    assert h.rt.coord.scheduled(rid) is not None  # the run is still watched: not notified yet
    h.rt.redis.delete(run_key(rid, "notified"))  # the dead sender's claim expired
    monkeypatch.setattr(h.dispatcher, "send_callback", real_send)
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    assert h.coordinator.advance(rid) == StepOutcome.FINISHED
    ((task, queue, message, task_id),) = h.dispatcher.callbacks
    assert (task, queue, task_id) == ("done", "q", completion_task_id(rid))
    assert message["run_id"] == rid and message["phase"] == "Completed"
    assert message["labels"] == {"team": "x"} and message["error"] is None
    completed = RunHistory.load(h.rt.events, RunId(rid)).completed
    assert completed is not None
    assert message["final_snapshot_id"] == str(completed.final_snapshot_id)
    assert h.rt.coord.scheduled(rid) is None


def test_failed_run_callback_names_the_failed_state_and_code(h: Harness) -> None:
    reply = send(h, "f", op="poison_demo", on_complete={"task": "done", "queue": "q"})
    h.drive(reply["run_id"])
    ((_, _, message, _),) = h.dispatcher.callbacks
    failed_state, error = message["failed_state"], message["error"]
    assert isinstance(failed_state, str) and isinstance(error, dict)
    assert message["phase"] == "Failed" and failed_state.endswith(".bad")
    assert error["code"] == "orphan_attempt_recovered"


@pytest.mark.parametrize("profile", ["Normal", "Minimal"])
def test_a_merge_conflict_callback_names_the_conflict_under_every_profile(
    h: Harness, profile: str
) -> None:
    """The `Minimal` profile keeps no `context_merge_conflict` event: the callback's reason
    is recomputed from the recorded deltas, as `resume` does."""
    config = {"execution_mode": {"FanOutJoin": {"max_concurrency": 2}}, "event_profile": profile}
    reply = send(h, "c", op="clash_demo", config=config, on_complete={"task": "d", "queue": "q"})
    h.drive(reply["run_id"])
    ((_, _, message, _),) = h.dispatcher.callbacks
    error = message["error"]
    assert message["phase"] == "Failed" and message["failed_state"] is None
    assert isinstance(error, dict) and error["code"] == "context_merge_conflict"
    assert "clash_demo.main.a and clash_demo.main.b" in error["message"]


def test_batch_replies_in_order_and_is_idempotent_per_delivery(h: Harness) -> None:
    requests = [
        {"op": "chain_demo", "input": {"states": 1}},
        {"op": "chain_demo", "input": {"states": 1}, "idempotency_key": "b1"},
        {"op": "nope"},
        "not an object",
    ]
    first = receive_batch(h.rt, requests, "batch-1")["replies"]
    assert [r.get("outcome") or r["error"]["code"] for r in first] == [
        "created",
        "created",
        "operation_not_found",
        "submission_invalid",
    ]
    again = receive_batch(h.rt, requests, "batch-1")["replies"]
    assert [r.get("outcome") for r in again[:2]] == ["existing", "existing"]
    assert [r["run_id"] for r in again[:2]] == [r["run_id"] for r in first[:2]]
    assert receive_batch(h.rt, [], "batch-2")["error"]["code"] == "submission_invalid"
    assert receive_batch(h.rt, requests, "b3", ["extra"])["error"]["code"] == (
        "submission_unknown_field"
    )


def test_shipped_schema_is_the_generated_one_and_matches_the_validator(h: Harness) -> None:
    shipped = REPO / "mfm_dist" / "schemas" / "submit-v1.json"
    assert json.loads(shipped.read_text()) == submit_schema()
    validator = jsonschema.Draft202012Validator(submit_schema())
    good = [
        OK,
        {"op": "x", "v": 1, "version": "2", "input": None, "labels": {"a": "b"}},
        {"op": "x", "config": {"execution_mode": {"FanOutJoin": {"max_concurrency": 8}}}},
        {
            "op": "x",
            "config": {
                "retry_policy": {
                    "max_attempts": 3,
                    "backoff": {"Exponential": {"base": {"secs": 1}, "max": {"secs": 30}}},
                }
            },
        },
        {
            "op": "x",
            "config": {"event_profile": {"Custom": "audit"}, "state_timeout": {"secs": 60}},
        },
        {"op": "x", "on_complete": {"task": "t", "queue": "q"}, "idempotency_key": "k"},
    ]
    for message in good:
        validator.validate(message)
        parse_request(message)  # the worker accepts what the schema accepts
    bad_messages: list[dict[str, object]] = [
        {"input": {}},
        {"op": "x", "extra": 1},
        {"op": "x", "config": {"execution_mode": {"max_concurrency": 8}}},
        {"op": "x", "on_complete": {"task": "t"}},
    ]
    for bad in bad_messages:
        assert not validator.is_valid(bad), bad


def test_secret_shaped_submission_is_refused_and_no_store_holds_it(
    h: Harness, tmp_path: Path
) -> None:
    secret = "correct horse battery staple " * 3  # a 12-word mnemonic
    reply = send(h, "s1", op="chain_demo", input={"note": secret.strip()})
    assert reply["error"]["code"] == "secrets_detected"
    assert "horse" not in json.dumps(reply)
    dump = b"".join(
        h.rt.redis.dump(k) or b"" for k in h.rt.redis.keys("*")
    )
    assert b"horse" not in dump
    art = Path(str(h.rt.artifacts.url).removeprefix("file://"))
    for path in art.rglob("*") if art.exists() else []:
        if path.is_file():
            assert b"horse" not in path.read_bytes()
