"""`mfm cancel` on the embedded backend: a live `mfm run` notices the request and ends the run
Cancelled; a run whose driver is gone is closed by `mfm cancel` itself; finished runs are
refused (exit 1) and nothing is appended (docs/cancellation.md)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from mfm_dist.events import EventEnvelope, RunCompleted, RunStatus, StateEntered, StateFailed
from mfm_dist.ids import RunId
from mfm_dist.stores.urls import open_stores
from support.cli_children import Mfm, mfm, spawn

SLOW = '{"items": 6, "sleep_ms": 20000}'


def _events(home: Path, run_id: str) -> list[EventEnvelope]:
    stores = open_stores(None, None, home, read_only=True)
    try:
        return stores.events.read_range(RunId(run_id))
    finally:
        stores.close()


def _slow_run(children: list[Mfm], tmp_path: Path, home: Path, *extra: str) -> tuple[Mfm, str]:
    """`mfm run` of a slow fan-out in a child process; returns it and the run id it said."""
    child = spawn(
        children, tmp_path, "--home", str(home), "--ops", "support.slow_ops",
        "run", "slow_fanout", "--input", SLOW, "--fan-out", "2", *extra,
    )  # fmt: skip
    return child, child.next_line().split()[2]


def test_cancel_ends_a_live_embedded_run(tmp_path: Path, children: list[Mfm]) -> None:
    home = tmp_path / "home"
    child, run_id = _slow_run(children, tmp_path, home)
    deadline = time.monotonic() + 30
    while sum(isinstance(e.event, StateEntered) for e in _events(home, run_id)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    asked = time.monotonic()
    out = mfm(home, "cancel", run_id[:8], "--reason", "wrong input", "--json")
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)
    assert row["run_id"] == run_id and row["request"] == "requested"
    assert row["phase"] == "Cancelled"
    code, stdout, err = child.finish(timeout=30)
    assert time.monotonic() - asked < 10  # handlers sleep 20 s each: they were abandoned
    assert code == 1, err  # a cancelled run is not a success
    assert f"run {run_id}: Cancelled" in stdout
    history = _events(home, run_id)
    closed = [e.event for e in history if isinstance(e.event, StateFailed)]
    assert len(closed) == 2 and all(f.error.code == "run_cancelled" for f in closed)
    assert isinstance(history[-1].event, RunCompleted)
    assert history[-1].event.status == RunStatus.CANCELLED
    assert mfm(home, "verify", run_id).exit_code == 0
    again = mfm(home, "cancel", run_id)
    assert again.exit_code == 1
    assert again.stderr.startswith("error[run_already_finished]: 1 run(s) had already finished")
    assert len(_events(home, run_id)) == len(history)
    listing = mfm(home, "runs", "--json")
    assert json.loads(listing.stdout)[0]["phase"] == "Cancelled"


def test_cancel_closes_an_interrupted_run_at_once(tmp_path: Path, children: list[Mfm]) -> None:
    home = tmp_path / "home"
    child, run_id = _slow_run(children, tmp_path, home)
    child.proc.send_signal(signal.SIGINT)
    child.proc.send_signal(signal.SIGINT)  # the second one stops at once
    code, _, _ = child.finish(timeout=30)
    assert code == 130
    out = mfm(home, "cancel", run_id)
    assert out.exit_code == 0, out.output
    assert out.stdout == f"{run_id}: cancel requested — Cancelled\n"
    history = _events(home, run_id)
    last = history[-1].event
    assert isinstance(last, RunCompleted) and last.status == RunStatus.CANCELLED
    assert mfm(home, "verify", run_id).exit_code == 0
    resumed = mfm(home, "resume", run_id)
    assert len(_events(home, run_id)) == len(history)
    assert "Cancelled" in resumed.stdout


def test_cancel_refuses_unknown_runs_and_secret_reasons(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = mfm(home, "run", "slow_fanout", "--input", '{"items": 1, "sleep_ms": 1}')
    assert done.exit_code == 0, done.output
    run_id = json.loads(mfm(home, "runs", "--json").stdout)[0]["run_id"]
    missing = mfm(home, "cancel", "00000000-0000-4000-8000-000000000000")
    assert missing.exit_code == 2 and missing.stderr.startswith("error[run_not_found]")
    leaked = mfm(home, "cancel", run_id, "--reason", "password=hunter2")
    assert leaked.exit_code == 2 and "hunter2" not in leaked.output


def test_cancel_selects_running_runs_by_label(tmp_path: Path, children: list[Mfm]) -> None:
    home = tmp_path / "home"
    done = mfm(home, "run", "slow_fanout", "--input", '{"items": 1, "sleep_ms": 1}',
               "--label", "batch=b1")  # fmt: skip
    assert done.exit_code == 0, done.output
    ids = [_slow_run(children, tmp_path, home, "--label", f"batch={b}")[1] for b in ("b1", "b2")]
    out = mfm(home, "cancel", "--label", "batch=b1", "--json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [(r["run_id"], r["phase"]) for r in rows] == [(ids[0], "Cancelled")]
    none = mfm(home, "cancel", "--label", "batch=b3", "--json")
    assert none.exit_code == 0 and json.loads(none.stdout) == []
    usage = mfm(home, "cancel")
    assert usage.exit_code == 2 and usage.stderr.startswith("error[usage]")
    b2 = json.loads(mfm(home, "runs", "--label", "batch=b2", "--json").stdout)
    assert [r["phase"] for r in b2] == ["Running"]
    assert mfm(home, "cancel", ids[1]).exit_code == 0


def test_run_timeout_option_cancels_the_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    started = time.monotonic()
    out = mfm(home, "run", "slow_fanout", "--input", SLOW, "--fan-out", "2",
              "--run-timeout", "0.3", "--json")  # fmt: skip
    assert time.monotonic() - started < 10
    assert out.exit_code == 1, out.output
    result = json.loads(out.stdout)
    assert result["phase"] == "Cancelled"
    assert result["error"]["code"] == "run_cancelled"
    assert "run_deadline_exceeded" in result["error"]["message"]
    bad = mfm(home, "run", "slow_fanout", "--run-timeout", "0")
    assert bad.exit_code == 2
