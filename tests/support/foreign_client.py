"""A client of the submission contract that imports nothing of mfm-dist — only `celery`,
`kombu` and `redis-py`, the way a service in another language would talk to the queue.

    python foreign_client.py send-task    '<kwargs json>'   # celery.Celery().send_task
    python foreign_client.py send-batch   '<requests json>' # mfm.submit_batch
    python foreign_client.py raw-push     '<kwargs json>'   # a hand-built protocol-2 message
    python foreign_client.py pickle       '<kwargs json>'   # a pickled body (refused)

Environment: BROKER_URL and RESULT_URL (redis://…). Prints the task's result as JSON.
Nothing here sets a queue or a route: default routing must work.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from typing import Any

TIMEOUT_S = 60.0


def _app(serializer: str = "json") -> Any:
    from celery import Celery

    app = Celery("foreign", broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_URL"])
    app.conf.update(
        task_serializer=serializer,
        accept_content=["json", "pickle"],
        result_accept_content=["json"],
        result_serializer="json",
    )
    return app


def send_task(name: str, kwargs: dict[str, Any], serializer: str = "json") -> Any:
    result = _app(serializer).send_task(name, kwargs=kwargs)
    return result.get(timeout=TIMEOUT_S)


def raw_push(kwargs: dict[str, Any]) -> Any:
    """What a Go or Node client does: LPUSH a Celery protocol-2 JSON envelope onto the
    default queue's list, then read `celery-task-meta-<id>` from the result store."""
    import redis

    task_id = str(uuid.uuid4())
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([[], kwargs, embed])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "go",
            "task": "mfm.submit",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    broker = redis.Redis.from_url(os.environ["BROKER_URL"])
    broker.lpush("celery", json.dumps(envelope))
    results = redis.Redis.from_url(os.environ["RESULT_URL"])
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        raw = results.get(f"celery-task-meta-{task_id}")
        if raw is not None:
            meta = json.loads(raw)
            assert meta["status"] == "SUCCESS", meta
            return meta["result"]
        time.sleep(0.05)
    raise SystemExit(f"no result for {task_id}")


def main() -> None:
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    if command == "send-task":
        out = send_task("mfm.submit", payload)
    elif command == "send-batch":
        out = send_task("mfm.submit_batch", {"requests": payload})
    elif command == "raw-push":
        out = raw_push(payload)
    elif command == "pickle":
        out = send_task("mfm.submit", payload, serializer="pickle")
    else:
        raise SystemExit(f"unknown command {command}")
    loaded = {m for m in sys.modules if m.split(".")[0] in ("mfm_dist", "workers")}
    assert not loaded, f"the foreign client imported {sorted(loaded)}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
