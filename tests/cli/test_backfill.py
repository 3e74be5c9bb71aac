"""Backfills on the embedded backend: planning, reprocess modes, re-issue, pause/resume,
cancel, dry-run and status output, date ranges, structured errors, and a killed CLI
(docs/backfills.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mfm_dist.backfill.driver import BackfillDriver, run_until_idle
from mfm_dist.backfill.local import LocalCanceller, LocalPool, accept_locally
from mfm_dist.backfill.model import (
    BackfillError,
    Partition,
    Reprocess,
    idempotency_key,
    partition_request,
    partition_run_id,
)
from mfm_dist.backfill.partitions import from_csv, from_jsonl, range_values
from mfm_dist.backfill.planner import CreateRequest, create, load_state
from mfm_dist.backfill.state import PartStatus, Phase
from mfm_dist.cli.backfill import run_driver_lock
from mfm_dist.cli.drivers import DriverLock
from mfm_dist.cli.main import cli
from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import submission_of
from mfm_dist.engine.local import LocalEngine
from mfm_dist.ids import RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.results import RunPhase
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.sqlite import SqliteEventStore
from mfm_dist.submission import run_id_for_key
from support import REPO

OP = "partition_demo"


class Home:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.events = SqliteEventStore(root / "events.sqlite3")
        self.artifacts = FileArtifactStore(root / "artifacts")
        self.registry = OperationRegistry.default()

    def request(self, name: str, parts: list[Partition], **kw: object) -> CreateRequest:
        return CreateRequest(
            name=name, op=OP, version=None, config=RunConfig(), field="day", source="test",
            partitions=parts, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def drive(self, name: str, *, max_wait_s: float = 0.05) -> BackfillDriver:
        """What `mfm backfill resume` does: hold the backfill's driver lock, run the
        partitions in a local pool whose runs hold their own driver locks."""
        state = load_state(self.events, name)
        assert state.issue is not None
        lock = DriverLock.acquire(self.events, f"backfill.{name}")
        pool = LocalPool(
            self.events, self.artifacts, self.registry, workers=state.issue.max_active,
            lock_run=run_driver_lock(self.events),
        )  # fmt: skip
        driver = BackfillDriver(
            self.events, self.artifacts, name, pool, LocalCanceller(self.events, name, "t"),
            poll_s=0.02,
        )  # fmt: skip
        try:
            run_until_idle(driver, max_wait_s=max_wait_s)
        finally:
            pool.wait()
            pool.shutdown()
            if lock is not None:
                lock.release(finished=True)
        return driver

    def runs_of(self, name: str) -> Counter[str]:
        """partition → how many runs carry the backfill's labels."""
        seen: Counter[str] = Counter()
        for summary in self.events.list_runs():
            record = submission_of(self.events.read_range(summary.run_id, 1, 2))
            if record is not None and record.labels.get("backfill") == name:
                seen[record.labels["partition"]] += 1
        return seen


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


def parts(*days: str, fail: tuple[str, ...] = ()) -> list[Partition]:
    return [
        Partition(value=d, input={"day": d, **({"fail": True} if d in fail else {})}) for d in days
    ]


def mfm(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(root), *args], catch_exceptions=False)


def error_code(result: Result) -> str:
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error["), result.stderr
    return line[len("error[") : line.index("]")]


def start_partition_run(home: Home, name: str, part: Partition, *, drive: bool) -> str:
    """A run of the partition under the backfill's key, as an earlier issue would have left
    it (driven to its end, or only started: `running`)."""
    req = home.request(name, [part])
    plan_like = __import__("mfm_dist.backfill.planner", fromlist=["build_plan"]).build_plan(
        home.registry, req
    )
    rid, created = accept_locally(
        home.events, home.artifacts, home.registry, partition_request(plan_like, 0, 0)
    )
    assert created
    if drive:
        LocalEngine(home.events, home.artifacts, home.registry).resume(rid)
    return str(rid)


# -- keys ------------------------------------------------------------------------------------------


def test_keys_and_run_ids_are_deterministic_and_generational() -> None:
    key = idempotency_key("daily", OP, "2026-01-01")
    assert key.startswith("backfill:daily:") and len(key) <= 200
    assert idempotency_key("daily", OP, "2026-01-01") == key
    assert idempotency_key("daily", OP, "2026-01-01", 2) == key + ":g2"
    assert idempotency_key("other", OP, "2026-01-01") != key
    assert idempotency_key("daily", "chain_demo", "2026-01-01") != key
    assert partition_run_id("daily", OP, "2026-01-01") == run_id_for_key(OP, key)
    assert partition_run_id("daily", OP, "x" * 200, 1) != partition_run_id("daily", OP, "x" * 200)


# -- reprocess modes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("missing", {"a": "skip_completed", "b": "skip_failed", "c": "attach", "d": "run"}),
        ("failed", {"a": "skip_completed", "b": "rerun_failed", "c": "attach", "d": "run"}),
        ("all", {"a": "rerun_completed", "b": "rerun_failed", "c": "attach", "d": "run"}),
    ],
)
def test_reprocess_modes_over_completed_failed_and_running_partitions(
    home: Home, mode: str, expected: dict[str, str]
) -> None:
    name = "hist"
    a, b, c, d = parts("a", "b", "c", "d", fail=("b",))
    run_a = start_partition_run(home, name, a, drive=True)
    run_b = start_partition_run(home, name, b, drive=True)
    run_c = start_partition_run(home, name, c, drive=False)  # running: its driver is gone
    phases = home.events.run_summaries([RunId(run_a), RunId(run_b), RunId(run_c)])
    assert [phases[r].phase for r in (run_a, run_b, run_c)] == [
        RunPhase.COMPLETED, RunPhase.FAILED, RunPhase.RUNNING
    ]  # fmt: skip

    request = home.request(name, [a, b, c, d], reprocess=Reprocess(mode))
    dry = create(home.events, home.artifacts, home.registry, request, dry_run=True)
    assert {r.value: r.decision for r in dry.rows} == expected
    assert home.events.list_journals("backfill") == []  # a dry run records nothing

    result = create(home.events, home.artifacts, home.registry, request)
    assert result.outcome == "created"
    assert {r.value: r.decision for r in result.rows} == expected
    home.drive(name)
    state = load_state(home.events, name)
    assert state.phase is Phase.COMPLETED
    runs = home.runs_of(name)
    reran = {v for v, dec in expected.items() if dec.startswith("rerun")}
    # the attached run was never duplicated; a rerun is exactly one more run
    assert runs == Counter({v: 2 if v in reran else 1 for v in "abcd"})
    assert home.events.run_summaries([RunId(run_c)])[run_c].phase is RunPhase.COMPLETED
    by_value = dict(zip("abcd", state.parts, strict=True))
    assert by_value["c"].generation == 0 and by_value["d"].generation == 0
    for v in reran:
        assert by_value[v].generation == 1  # a new key generation, recorded in the journal
    expected_status = {"a": "completed", "b": "failed", "c": "completed", "d": "completed"}
    assert {v: p.status.value for v, p in by_value.items()} == expected_status
    if mode == "missing":
        assert by_value["b"].code is None  # kept as it was; its error lives in its run


def test_reissuing_a_backfill_starts_no_new_run(home: Home) -> None:
    name = "again"
    days = parts("2026-01-01", "2026-01-02", "2026-01-03", fail=("2026-01-02",))
    request = home.request(name, days, max_active=2)
    assert create(home.events, home.artifacts, home.registry, request).outcome == "created"
    # Re-issued while it is still going (nothing ran yet): nothing is recorded.
    again = create(home.events, home.artifacts, home.registry, request)
    assert again.outcome == "unchanged"
    home.drive(name)
    before = home.runs_of(name)
    assert before == Counter({d.value: 1 for d in days})
    for _ in range(2):
        result = create(home.events, home.artifacts, home.registry, request)
        assert result.outcome == "reissued" and result.new_runs == 0
        home.drive(name)
    assert home.runs_of(name) == before
    assert len(home.events.list_runs()) == 3
    # Another plan while it is running is refused, not merged.
    create(home.events, home.artifacts, home.registry, home.request(name, days, max_active=2,
           reprocess=Reprocess.FAILED))  # fmt: skip
    with pytest.raises(BackfillError) as busy:
        create(home.events, home.artifacts, home.registry, home.request(name, days[:1]))
    assert busy.value.code == "backfill_active"


def test_pause_and_resume(home: Home) -> None:
    name = "pz"
    days = parts(*[f"p{i}" for i in range(6)])
    create(home.events, home.artifacts, home.registry, home.request(name, days, max_active=2))
    pool = LocalPool(home.events, home.artifacts, home.registry, workers=2)
    driver = BackfillDriver(home.events, home.artifacts, name, pool, None, poll_s=0.01)
    first = driver.step()
    assert first.claimed == 2
    assert mfm(home.root, "backfill", "pause", name).exit_code == 0
    assert mfm(home.root, "backfill", "pause", name).stdout.strip().endswith("already paused")
    pool.wait()
    for _ in range(5):
        outcome = driver.step()
        assert outcome.claimed == 0
    state = load_state(home.events, name)
    assert state.phase is Phase.PAUSED
    assert len(state.indices(PartStatus.COMPLETED)) == 2
    assert len(state.indices(PartStatus.PENDING)) == 4
    assert outcome.wake_s is None  # nothing changes until someone resumes it
    pool.shutdown()
    resumed = mfm(home.root, "backfill", "resume", name)
    assert resumed.exit_code == 0, resumed.output
    state = load_state(home.events, name)
    assert state.phase is Phase.COMPLETED and state.counts()["completed"] == 6
    assert home.runs_of(name) == Counter({d.value: 1 for d in days})


def test_cancel_stops_new_runs_and_cancels_active_ones(home: Home) -> None:
    name = "cx"
    days = [Partition(value=f"s{i}", input={"day": f"s{i}", "sleep_ms": 60_000}) for i in range(5)]
    create(home.events, home.artifacts, home.registry, home.request(name, days, max_active=2))
    outcome: dict[str, object] = {}

    def drive() -> None:
        outcome["driver"] = home.drive(name)

    thread = threading.Thread(target=drive)
    thread.start()
    deadline = time.monotonic() + 20
    while len(load_state(home.events, name).indices(PartStatus.CLAIMED)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while len([s for s in home.events.list_runs() if s.head_seq >= 3]) < 2:
        assert time.monotonic() < deadline  # both runs are inside their sleeping state
        time.sleep(0.05)
    started = time.monotonic()
    result = mfm(home.root, "backfill", "cancel", name, "--reason", "wrong day")
    assert result.exit_code == 0, result.output
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10
    state = load_state(home.events, name)
    assert state.phase is Phase.CANCELLED
    assert state.counts() | {} == {
        "pending": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 2, "rejected": 0,
        "not_started": 3,
    }  # fmt: skip
    runs = home.events.list_runs()
    assert len(runs) == 2 and all(r.phase is RunPhase.CANCELLED for r in runs)
    again = mfm(home.root, "backfill", "cancel", name)
    assert again.exit_code == 2 and error_code(again) == "backfill_finished"


# -- the CLI ---------------------------------------------------------------------------------------


def test_dry_run_output_names_each_partition_and_the_totals(home: Home) -> None:
    name = "dry"
    a, b, c = parts("2026-01-01", "2026-01-02", "2026-01-03", fail=("2026-01-02",))
    run_a = start_partition_run(home, name, a, drive=True)
    run_b = start_partition_run(home, name, b, drive=True)
    run_c = start_partition_run(home, name, c, drive=False)
    home.events.close()
    args = ["backfill", "create", OP, "--name", name, "--from", "2026-01-01", "--to",
            "2026-01-04", "--every", "1d", "--field", "day", "--dry-run"]  # fmt: skip
    # 2026-01-02's input differs (no "fail"), but its key is the same partition's key.
    out = mfm(home.root, *args, "--reprocess", "failed")
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines() == [
        f"2026-01-01  skip: completed as {run_a}",
        f"2026-01-02  rerun: failed as {run_b}",
        f"2026-01-03  attach: running as {run_c}",
        "2026-01-04  run",
        "totals: run 1, skip 1, attach 1, rerun 1 (4 partitions; dry run: nothing recorded)",
    ]
    missing = mfm(home.root, *args)
    assert f"2026-01-02  skip: failed as {run_b}" in missing.stdout
    assert "totals: run 1, skip 2, attach 1, rerun 0" in missing.stdout
    as_json = mfm(home.root, *args, "--json")
    body = __import__("json").loads(as_json.stdout)
    assert body["totals"] == {"run": 1, "skip": 2, "attach": 1, "rerun": 0}
    assert [p["action"] for p in body["partitions"]] == ["skip", "skip", "attach", "run"]
    assert mfm(home.root, "backfill", "list").stdout == ""  # nothing recorded


def test_create_then_status_lists_counts_rates_and_failed_partitions(tmp_path: Path) -> None:
    root = tmp_path / "h"
    lines = ['{"day": "a"}', '{"day": "b", "fail": true}', "", '{"day": "c"}']
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    made = mfm(root, "backfill", "create", OP, "--name", "st", "--file",
               str(tmp_path / "p.jsonl"), "--field", "day", "--max-active", "2")  # fmt: skip
    assert made.exit_code == 1, made.output  # a partition failed
    assert "backfill st: created" in made.stderr
    status = mfm(root, "backfill", "status", "st")
    assert status.exit_code == 0
    text = status.stdout
    assert "backfill st: completed (issue 1, reprocess missing, local)" in text
    assert "op partition_demo" in text and "3 partitions, max active 2" in text
    assert "completed 2  running 0  pending 0  failed 1  cancelled 0  rejected 0" in text
    assert "runs started 3" in text and "runs/s" in text and "ETA" in text
    failed_line = [ln for ln in text.splitlines() if ln.strip().startswith("b ")]
    assert len(failed_line) == 1 and "partition_failed" in failed_line[0]
    assert partition_run_id("st", OP, "b") in failed_line[0]
    report = __import__("json").loads(mfm(root, "backfill", "status", "st", "--json").stdout)
    assert report["counts"]["completed"] == 2 and report["failed"][0]["code"] == "partition_failed"
    listed = mfm(root, "backfill", "list").stdout
    assert listed.startswith("st  partition_demo  completed  3/3 done")
    retried = mfm(root, "backfill", "retry", "st", "--failed")
    assert retried.exit_code == 1  # it fails again, deterministically, as a new run
    assert "rerun 1" in retried.stderr
    home = Home(root)
    assert home.runs_of("st") == Counter({"a": 1, "b": 2, "c": 1})
    assert load_state(home.events, "st").issue.origin == "retry"  # type: ignore[union-attr]


def test_date_ranges() -> None:
    assert range_values("2026-01-30", "2026-02-02", "1d") == [
        "2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"
    ]  # fmt: skip
    assert range_values("2026-01-01", "2026-01-15", "1w") == [
        "2026-01-01", "2026-01-08", "2026-01-15"
    ]  # fmt: skip
    assert range_values("2026-03-01", "2026-03-01", "1d") == ["2026-03-01"]
    assert range_values("2026-01-01", "2026-01-01T12:00", "6h") == [
        "2026-01-01T00:00:00Z", "2026-01-01T06:00:00Z", "2026-01-01T12:00:00Z"
    ]  # fmt: skip
    assert range_values("2026-01-01T01:00:00+01:00", "2026-01-01T00:30Z", "15m") == [
        "2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z"
    ]  # fmt: skip
    assert len(range_values("2026-01-01", "2026-03-31", "1d")) == 90
    assert range_values("2026-01-01", "2026-01-02", "36h") == ["2026-01-01T00:00:00Z"]


def test_files_of_inputs() -> None:
    jl = from_jsonl(Path("-"), {"region": "eu"}, "day", text='{"day": "a"}\n\n{"day": 7}\n')
    assert [(p.value, p.input) for p in jl] == [
        ("a", {"region": "eu", "day": "a"}), ("7", {"region": "eu", "day": 7})
    ]  # fmt: skip
    digest = from_jsonl(Path("-"), None, None, text='{"x": 1}\n{"x": 2}\n')
    assert len({p.value for p in digest}) == 2 and all(len(p.value) == 16 for p in digest)
    rows = from_csv(Path("-"), {"v": 1}, "day", text="day,site\n2026-01-01,a\n2026-01-02,b\n")
    assert [p.input for p in rows] == [
        {"v": 1, "day": "2026-01-01", "site": "a"}, {"v": 1, "day": "2026-01-02", "site": "b"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--name", "x"], "backfill_source_invalid"),
        (["--name", "x", "--partitions", "a", "--from", "2026-01-01"], "backfill_source_invalid"),
        (["--name", "x", "--partitions", "a,b"], "backfill_field_required"),
        (["--name", "x", "--partitions", "a,b,a", "--field", "day"],
         "backfill_partition_duplicate"),
        (["--name", "bad name", "--partitions", "a", "--field", "day"], "backfill_name_invalid"),
        (["--name", "x", "--partitions", "a", "--field", "day", "--rate", "fast"],
         "backfill_rate_invalid"),
        (["--name", "x", "--from", "2026-02-01", "--to", "2026-01-01", "--every", "1d",
          "--field", "day"], "backfill_range_invalid"),
        (["--name", "x", "--from", "2026-01-01", "--to", "2026-01-02", "--every", "0d",
          "--field", "day"], "backfill_step_invalid"),
        (["--name", "x", "--from", "2026-13-01", "--to", "2026-01-02", "--every", "1d",
          "--field", "day"], "backfill_range_invalid"),
        (["--name", "x", "--from", "2000-01-01", "--to", "2099-01-01", "--every", "1m",
          "--field", "day"], "backfill_too_many_partitions"),
        (["--name", "x", "--partitions", "my password is hunter2", "--field", "day"],
         "secrets_detected"),
        (["--name", "x", "--partitions", "a", "--field", "day", "--input", "[1]"],
         "backfill_input_invalid"),
        (["--name", "x", "--partitions", "a", "--field", "day", "--input", '{"fail": 3}'],
         "op_config_invalid"),
        (["--name", "x", "--partitions", "a", "--field", "day", "--input", '{"v": 1.5}'],
         "float_not_allowed"),
        (["--name", "x", "--file", "/nonexistent/p.jsonl"], "backfill_source_unreadable"),
    ],
)
def test_bad_input_gets_structured_errors(tmp_path: Path, args: list[str], code: str) -> None:
    result = mfm(tmp_path / "h", "backfill", "create", OP, *args)
    assert result.exit_code == 2, result.output
    assert error_code(result) == code
    assert "hunter2" not in result.stderr
    assert not (tmp_path / "h" / "events.sqlite3").exists() or mfm(
        tmp_path / "h", "backfill", "list"
    ).stdout == ""


def test_bad_files_and_unknown_backfills(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"day": "a"}\nnot json\n')
    result = mfm(tmp_path / "h", "backfill", "create", OP, "--name", "x", "--file", str(bad))
    assert error_code(result) == "backfill_source_invalid" and "line 2" in result.stderr
    unknown = mfm(tmp_path / "h", "backfill", "create", "no_such_op", "--name", "x",
                  "--partitions", "a", "--field", "day")  # fmt: skip
    assert error_code(unknown) == "operation_not_found"
    for command in (["status", "nope"], ["pause", "nope"], ["resume", "nope"],
                    ["cancel", "nope"], ["retry", "nope", "--failed"]):  # fmt: skip
        missing = mfm(tmp_path / "h", "backfill", *command)
        assert missing.exit_code == 2 and error_code(missing) == "backfill_not_found", command


def test_planning_2000_partitions_plans_every_one(home: Home) -> None:
    """How fast is measured by scripts/bench_backfill.py (target <= 2 s), not here."""
    days = range_values("2021-01-01", "2026-06-23", "1d")
    assert len(days) == 2000
    request = home.request("big", [Partition(value=d, input={"day": d}) for d in days])
    result = create(home.events, home.artifacts, home.registry, request)
    assert result.outcome == "created" and result.totals()["run"] == 2000
    assert {"validate_s", "classify_s"} <= set(result.timings)  # what the benchmark reports


# -- a killed CLI ------------------------------------------------------------------------------


def test_killed_cli_then_resume_completes_with_one_run_per_partition(tmp_path: Path) -> None:
    root = tmp_path / "h"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "mfm_dist.cli.main", "--home", str(root), "backfill", "create",
            OP, "--name", "kill", "--partitions", ",".join(f"k{i:02d}" for i in range(12)),
            "--field", "day", "--input", '{"sleep_ms": 400}', "--max-active", "3"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    events = SqliteEventStore(root / "events.sqlite3", read_only=True)
    deadline = time.monotonic() + 60
    while len(load_state(events, "kill").indices(PartStatus.COMPLETED)) < 3 or not [
        r for r in events.list_runs() if r.phase is RunPhase.RUNNING and r.head_seq >= 3
    ]:  # killed with runs in flight (each sleeps 400 ms inside its one state)
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    state = load_state(events, "kill")
    assert state.finished is None and state.indices(PartStatus.PENDING)
    interrupted = [r for r in events.list_runs() if r.phase is RunPhase.RUNNING]
    assert interrupted  # runs left open by the killed process
    resumed = mfm(root, "backfill", "resume", "kill")
    assert resumed.exit_code == 0, resumed.output
    home = Home(root)
    assert load_state(home.events, "kill").phase is Phase.COMPLETED
    assert home.runs_of("kill") == Counter({f"k{i:02d}": 1 for i in range(12)})
    assert all(r.phase is RunPhase.COMPLETED for r in home.events.list_runs())
    verify = [mfm(root, "verify", str(r.run_id)).exit_code for r in home.events.list_runs()]
    assert set(verify) == {0}
