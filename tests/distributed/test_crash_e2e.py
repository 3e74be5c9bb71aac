"""A real crash: `mfm run` killed with SIGKILL mid fan-out, then `mfm resume` and `mfm verify`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfm_dist.events import StateCompleted, StateEntered, StateFailed
from mfm_dist.stores.sqlite import SqliteEventStore
from support import TESTS


def mfm(*args: str, home: Path, **kwargs: object) -> list[str]:
    script = Path(sys.executable).with_name("mfm")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "mfm_dist.cli.main"]
    return [*base, "--home", str(home), "--ops", "support.slow_ops", *args]


@pytest.mark.slow
def test_sigkill_mid_fan_out_then_resume(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFM_")}
    env["PYTHONPATH"] = str(TESTS)
    run = subprocess.Popen(
        mfm("run", "slow_fanout", "--input", '{"items": 40, "sleep_ms": 100}', "--fan-out", "4",
            home=tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    db = tmp_path / "events.sqlite3"
    deadline = time.monotonic() + 60
    run_id = None
    while time.monotonic() < deadline:
        if db.exists():
            store = SqliteEventStore(db)
            runs = store.list_runs()
            if runs:
                run_id = runs[0].run_id
                log = store.read_range(run_id)
                done = sum(isinstance(e.event, StateCompleted) for e in log)
                entered = sum(isinstance(e.event, StateEntered) for e in log)
                # Kill mid-flight: some states done and some attempts open (between two
                # commits of the driver nothing may be open for a moment).
                if done >= 8 and entered > done:
                    store.close()
                    break
            store.close()
        time.sleep(0.02)
    assert run_id is not None, "the run never started"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL

    store = SqliteEventStore(db)
    before = store.read_range(run_id)
    entered = sum(isinstance(e.event, StateEntered) for e in before)
    closed = sum(isinstance(e.event, (StateCompleted, StateFailed)) for e in before)
    # Almost always attempts are open (the wait above saw some); an attempt may still have
    # closed in the millisecond before the kill. Either way resume must finish the run, and
    # close exactly the attempts left open as orphans (checked below).
    assert entered >= closed
    assert len(before) < 1 + 2 * 41 + 1
    store.close()

    resumed = subprocess.run(
        mfm("resume", str(run_id), home=tmp_path), env=env, capture_output=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert b"Completed" in resumed.stdout

    verified = subprocess.run(
        mfm("verify", str(run_id), home=tmp_path), env=env, capture_output=True, timeout=120
    )
    assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()

    store = SqliteEventStore(db)
    after = store.read_range(run_id)
    assert after[: len(before)] == before  # nothing recorded was changed
    orphans = [e for e in after if isinstance(e.event, StateFailed)]
    assert len(orphans) == entered - closed
    assert all(e.event.error.code == "orphan_attempt_recovered" for e in orphans)  # type: ignore[union-attr]
    completions: dict[str, int] = {}
    for e in after:
        if isinstance(e.event, StateCompleted):
            completions[str(e.event.state_id)] = completions.get(str(e.event.state_id), 0) + 1
    assert len(completions) == 41 and set(completions.values()) == {1}


@pytest.mark.slow
def test_two_concurrent_resumes_leave_one_valid_history(tmp_path: Path) -> None:
    """Two `mfm resume` processes race on one crashed run: one drives it; the other is refused
    (the driver lock) or stopped (the expected-seq guard) with `run_driven_elsewhere`, exit 2;
    the history stays valid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFM_")}
    env["PYTHONPATH"] = str(TESTS)
    run = subprocess.Popen(
        mfm("run", "slow_fanout", "--input", '{"items": 12, "sleep_ms": 100}', "--fan-out", "3",
            home=tmp_path),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "events.sqlite3"
    deadline = time.monotonic() + 60
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        if db.exists():
            store = SqliteEventStore(db)
            runs = store.list_runs()
            if runs and any(
                isinstance(e.event, StateCompleted) for e in store.read_range(runs[0].run_id)
            ):
                run_id = runs[0].run_id
            store.close()
        time.sleep(0.02)
    assert run_id is not None
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    resumes = [
        subprocess.Popen(mfm("resume", str(run_id), home=tmp_path), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outcomes = sorted((p.wait(timeout=120), p.communicate()[1].decode()) for p in resumes)
    codes = [code for code, _ in outcomes]
    assert codes[0] == 0 and codes[1] in (0, 2), outcomes
    if codes[1] == 2:
        assert outcomes[1][1].startswith(f"error[run_driven_elsewhere]: run {run_id} is being ")
    # Finish whatever the loser left (idempotent if the winner already completed the run).
    final = subprocess.run(mfm("resume", str(run_id), home=tmp_path), env=env, capture_output=True,
                           timeout=120)
    assert final.returncode == 0, final.stderr.decode()
    verified = subprocess.run(mfm("verify", str(run_id), home=tmp_path), env=env,
                              capture_output=True, timeout=120)
    assert verified.returncode == 0, verified.stdout.decode()
    store = SqliteEventStore(db)
    done: dict[str, int] = {}
    for e in store.read_range(run_id):
        if isinstance(e.event, StateCompleted):
            done[str(e.event.state_id)] = done.get(str(e.event.state_id), 0) + 1
    assert len(done) == 13 and set(done.values()) == {1}
