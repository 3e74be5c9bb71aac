"""`mfm run` says its run id at once; Ctrl-C ends with the id, the exact resume command and exit
130; `mfm runs`/`status` tell an interrupted run from a live one; and a second driver of a run is
refused (or, racing without the driver lock, stopped) with `run_driven_elsewhere`."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from mfm_dist.cli.main import cli
from mfm_dist.config import FanOutJoin, RunConfig
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    stored_and_validated,
)
from mfm_dist.engine.local import LocalEngine
from mfm_dist.events import StateCompleted, StateEntered
from mfm_dist.ids import RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.reports import RunReport
from mfm_dist.results import RunPhase
from mfm_dist.stores.urls import open_stores
from support.cli_children import Mfm, mfm, spawn


def runs_json(home: Path) -> list[dict[str, object]]:
    listing = mfm(home, "runs", "--json")
    assert listing.exit_code == 0, listing.output
    rows: list[dict[str, object]] = json.loads(listing.stdout)
    return rows


def completed_items(home: Path) -> int:
    stores = open_stores(None, None, home, read_only=True)
    try:
        (row,) = stores.events.list_runs()
        return sum(
            isinstance(env.event, StateCompleted) for env in stores.events.read_range(row.run_id)
        )
    finally:
        stores.close()


def test_ctrl_c_names_the_run_and_its_resume_command(tmp_path: Path, children: list[Mfm]) -> None:
    home = tmp_path / "home"
    slow = '{"items": 12, "sleep_ms": 500}'
    child = spawn(
        children, tmp_path, "--home", str(home), "--ops", "support.slow_ops",
        "run", "slow_fanout", "--input", slow, "--fan-out", "2",
    )  # fmt: skip
    first = child.next_line()
    assert first.startswith("started run ") and first.endswith(" (slow_fanout, 13 states)\n")
    run_id = first.split()[2]
    assert child.proc.poll() is None  # said while the run is still going

    # While it runs: shown as live, and a second driver is refused at once.
    (row,) = runs_json(home)
    assert row["run_id"] == run_id and row["phase"] == "Running"
    assert row["interrupted"] is False
    assert row["driver"] == {
        "host": socket.gethostname(),
        "pid": child.proc.pid,
        "since_ms": row["driver"]["since_ms"],  # type: ignore[index]
        "liveness": "live",
    }
    second = mfm(home, "resume", run_id)
    assert second.exit_code == 2, second.output
    assert second.stderr.startswith(
        f"error[run_driven_elsewhere]: run {run_id} is being driven by "
        f"{socket.gethostname()}:{child.proc.pid} (since "
    )

    child.proc.send_signal(signal.SIGINT)
    code, out, err = child.finish()
    assert code == 130, err
    assert out == ""
    command = f"mfm --home {home} --ops support.slow_ops resume {run_id}"
    assert err.splitlines()[-1] == (
        f"error[interrupted]: run {run_id} interrupted; resume with: {command}"
    )

    (row,) = runs_json(home)
    assert row["phase"] == "Running" and row["interrupted"] is True
    assert row["driver"]["liveness"] == "gone"  # type: ignore[index]
    text = mfm(home, "runs")
    assert f"interrupted — resume with: mfm resume {run_id}" in text.stdout
    status = mfm(home, "status", run_id)
    assert status.stdout.splitlines()[1].startswith(
        f"interrupted: its driver {socket.gethostname()}:{child.proc.pid} (since "
    )
    as_json = json.loads(mfm(home, "status", run_id, "--json").stdout)
    assert as_json["interrupted"] is True
    report = RunReport.model_validate_json(mfm(home, "status", run_id, "--json").stdout)
    assert report.phase == RunPhase.RUNNING and report.counts["completed"] < 13

    # The printed command, as printed, finishes the run.
    argv = shlex.split(command)
    assert argv[0] == "mfm"
    resumed = spawn(children, tmp_path, *argv[1:])
    code, out, err = resumed.finish()
    assert code == 0, err
    assert out.startswith(f"run {run_id}: Completed")
    (row,) = runs_json(home)
    assert row["phase"] == "Completed" and row["driver"] is None
    assert not (home / "drivers" / f"{run_id}.json").exists()
    assert mfm(home, "verify", run_id).exit_code == 0


def test_a_second_ctrl_c_stops_at_once_and_resume_recovers(
    tmp_path: Path, children: list[Mfm]
) -> None:
    home = tmp_path / "home"
    child = spawn(
        children, tmp_path, "--home", str(home), "--ops", "support.slow_ops", "run", "slow_fanout",
        "--input", '{"items": 2, "sleep_ms": 4000}', "--fan-out", "2", "--json",
    )  # fmt: skip
    stores = open_stores(None, None, home, read_only=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # --json says nothing on stderr: wait for both attempts to be entered
            rows = stores.events.list_runs()
            entered = [
                env
                for env in (stores.events.read_range(rows[0].run_id) if rows else [])
                if isinstance(env.event, StateEntered)
            ]
            if len(entered) == 2:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run_id = str(rows[0].run_id)
    finally:
        stores.close()
    child.proc.send_signal(signal.SIGINT)
    assert "Ctrl-C again to stop now" in child.next_line() + child.next_line()
    child.proc.send_signal(signal.SIGINT)
    code, out, err = child.finish()
    assert code == 130 and out == ""
    assert completed_items(home) == 0  # did not wait for the 4 s handlers
    assert err.splitlines()[-1] == (
        f"error[interrupted]: run {run_id} stopped at once (attempts in flight left open); "
        f"resume with: mfm --home {home} --ops support.slow_ops resume {run_id}"
    )
    (row,) = runs_json(home)
    assert row["interrupted"] is True

    resumed = mfm(home, "resume", run_id)
    assert resumed.exit_code == 0, resumed.output
    report = RunReport.model_validate_json(mfm(home, "status", run_id, "--json").stdout)
    assert {s.last_error_code for s in report.states if s.state_id.endswith("item_0000")} == {
        "orphan_attempt_recovered"
    }


def test_a_second_ctrl_c_landing_on_an_attempt_thread_still_stops_at_once(
    tmp_path: Path, children: list[Mfm]
) -> None:
    """Linux may deliver a Ctrl-C to any thread; the main thread, waiting for the attempts in
    flight after the first press, must still hear the second (support.ctrl_c_on_a_worker)."""
    home = tmp_path / "home"
    child = Mfm(
        [
            sys.executable, "-m", "support.ctrl_c_on_a_worker", str(home),
            "--ops", "support.slow_ops", "run", "slow_fanout",
            "--input", '{"items": 2, "sleep_ms": 6000}', "--fan-out", "2", "--json",
        ],
        tmp_path,
    )  # fmt: skip
    children.append(child)
    code, out, err = child.finish()
    assert code == 130 and out == "", err
    assert "Ctrl-C again to stop now" in err
    assert "stopped at once (attempts in flight left open)" in err.splitlines()[-1]
    assert completed_items(home) == 0  # exited while both handlers were still sleeping


def test_losing_a_race_without_the_lock_is_run_driven_elsewhere(
    tmp_path: Path, children: list[Mfm]
) -> None:
    """The other driver is the Python API (it takes no driver lock): the store's expected-seq
    guard stops the CLI, which says so instead of quoting sequence numbers."""
    home = tmp_path / "home"
    registry = OperationRegistry.default(extra_modules=("support.slow_ops",))
    config = RunConfig(execution_mode=FanOutJoin(max_concurrency=2))
    prepared = prepare_run(registry, "slow_fanout", {"items": 1, "sleep_ms": 3000}, config)
    stores = open_stores(None, None, home)
    try:
        manifest_id, initial = stored_and_validated(stores.artifacts, prepared)
        rid, _ = record_run_start(
            stores.events,
            stores.artifacts,
            plan=prepared.plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
        )
        child = spawn(
            children, tmp_path, "--home", str(home), "--ops", "support.slow_ops", "resume", rid
        )
        deadline = time.monotonic() + 60
        while not any(isinstance(e.event, StateEntered) for e in stores.events.read_range(rid)):
            assert time.monotonic() < deadline and child.proc.poll() is None
            time.sleep(0.02)
        # The CLI's handler sleeps 3 s: meanwhile this driver closes its attempt as an orphan.
        result = LocalEngine(stores.events, stores.artifacts, registry).resume(RunId(rid))
    finally:
        stores.close()
    assert result.phase == RunPhase.COMPLETED
    code, out, err = child.finish()
    assert code == 2 and out == "", err
    assert err.startswith(
        f"error[run_driven_elsewhere]: run {rid} is being driven by another process: it wrote "
        "to the run's history (event "
    )
    assert f"follow the run with `mfm status {rid}`" in err
    assert "expected head" not in err
    assert mfm(home, "verify", str(rid)).exit_code == 0


def test_run_says_its_id_first_and_json_stays_quiet(tmp_path: Path) -> None:
    home = tmp_path / "home"
    text = CliRunner().invoke(cli, ["--home", str(home), "run", "etl_demo"])
    assert text.exit_code == 0, text.output
    run_id = text.stdout.split()[1].rstrip(":")
    assert text.stderr == f"started run {run_id} (etl_demo, 4 states)\n"
    as_json = CliRunner().invoke(cli, ["--home", str(home), "run", "etl_demo", "--json"])
    assert as_json.exit_code == 0 and as_json.stderr == ""
    assert json.loads(as_json.stdout)["phase"] == "Completed"
    assert not (home / "drivers" / f"{run_id}.json").exists()  # finished: no record left
