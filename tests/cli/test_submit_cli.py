"""`mfm submit` never leaves an invisible run: with the broker unreachable it still prints the
run id, at once, and the run's timer is due now (a control worker's poller wakes it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from support.servers import free_port


def test_submit_with_a_broken_broker_prints_the_id_and_arms_the_timer(
    redis_url: str,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "MFM_EVENTS_URL": redis_url,
        "MFM_ARTIFACTS_URL": f"file://{tmp_path / 'art'}",
        "MFM_BROKER_URL": f"redis://127.0.0.1:{free_port()}/1",
    }
    mfm = Path(sys.executable).with_name("mfm")
    started = time.monotonic()
    done = subprocess.run(
        [str(mfm), "submit", "chain_demo", "--input", '{"states": 1}', "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 15
    run_id = json.loads(done.stdout)["run_id"]
    assert "broker unavailable" in done.stderr and run_id in done.stderr
    client = redis.Redis.from_url(redis_url)
    due = client.zscore("mfm:timers", run_id)
    assert due is not None and due <= time.time() * 1000
    assert client.hget(f"mfm:{{{run_id}}}:meta", "phase") == b"Running"
