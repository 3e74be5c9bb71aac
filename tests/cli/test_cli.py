"""The `mfm` command line, end to end on a temporary embedded home (SQLite + files)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from mfm_dist.cli import running as cli_running
from mfm_dist.cli.graph import render_plan
from mfm_dist.cli.main import cli
from mfm_dist.cli.progress import LiveProgress, ProgressTracker
from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    stored_and_validated,
)
from mfm_dist.events import EventDraft, EventEnvelope, StateEntered
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.operations import OperationRegistry
from mfm_dist.reports import RunReport
from mfm_dist.results import RunResult
from mfm_dist.stores.urls import open_stores

OPS_MODULE = "mfm_cli_test_ops"
OPS_SOURCE = textwrap.dedent(
    '''
    """A tiny op with a side-effect state, for `mfm run --dry-run` tests."""
    from mfm_dist.operations import Operation
    from mfm_dist.plan import StateGraph
    from mfm_dist.state import FnState, StateMeta


    class SideEffectDemo(Operation):
        op_id = "cli_side_effect_demo"
        op_version = "1"
        description = "compute a value, then apply it"

        def expand(self, op_path, op_config, run_config):
            async def compute(ctx, io, rec):
                ctx.set("computed", 42)

            async def apply(ctx, io, rec):
                ctx.set("applied", True)

            graph = StateGraph()
            a = graph.add(f"{op_path}.compute", FnState(compute, StateMeta(tags=["compute"])))
            b = graph.add(
                f"{op_path}.apply", FnState(apply, StateMeta(tags=["apply_side_effect"]))
            )
            graph.edge(a, b)
            return graph


    def register_operations(registry):
        registry.register(SideEffectDemo())
    '''
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "mfm-home"


@pytest.fixture
def ops_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "ops"
    folder.mkdir()
    (folder / f"{OPS_MODULE}.py").write_text(OPS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop(OPS_MODULE, None)


def mfm(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def run_json(home: Path, *args: str) -> RunResult:
    result = mfm(home, "run", *args, "--json")
    assert result.exit_code in (0, 1), result.output
    return RunResult.model_validate_json(result.stdout)


def error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- run, and the inspection commands agreeing with it ------------------------------------------


def test_fanout_run_and_inspection_agree(home: Path) -> None:
    result = mfm(home, "run", "fanout_demo", "--input", '{"items": 50}', "--fan-out", "8")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("run ") and first.endswith(": Completed")
    run_id = first.split()[1].rstrip(":")
    final_line = next(line for line in result.stdout.splitlines() if line.startswith("final"))
    final_id = final_line.split()[-1]

    status = mfm(home, "status", run_id, "--json")
    assert status.exit_code == 0, status.output
    report = RunReport.model_validate_json(status.stdout)
    assert report.run_id == run_id and report.phase.value == "Completed"
    assert report.final_snapshot_id == final_id
    assert report.counts["completed"] == 51 and len(report.states) == 51
    assert all(s.attempts == 1 for s in report.states)

    text_status = mfm(home, "status", run_id)
    assert text_status.exit_code == 0
    assert "Completed" in text_status.stdout and "fanout_demo.main.join" in text_status.stdout

    events = mfm(home, "events", run_id, "--json")
    assert events.exit_code == 0
    lines = events.stdout_bytes.splitlines()
    envelopes = [EventEnvelope.from_bytes(line) for line in lines]
    assert [e.seq for e in envelopes] == list(range(1, len(envelopes) + 1))
    assert report.head_seq == len(envelopes) == 1 + 2 * 51 + 2  # start, enter/complete, domain, end
    stores = open_stores(None, None, home)
    try:
        persisted = stores.events.read_range(RunId(run_id), 1, None)
        assert lines == [env.to_bytes() for env in persisted]
        snapshot_bytes = stores.artifacts.get(final_id)
    finally:
        stores.close()

    table = mfm(home, "events", run_id)
    assert table.exit_code == 0
    assert "RunStarted" in table.stdout and "fanout_joined" in table.stdout

    context = mfm(home, "context", run_id)
    assert context.exit_code == 0
    content = json.loads(context.stdout)
    assert content["summary"]["items"] == 50 and content["input"] == {"items": 50}
    assert json.loads(snapshot_bytes) == content

    one = mfm(home, "context", run_id, "--state", "fanout_demo.main.item_0007")
    assert one.exit_code == 0
    assert set(json.loads(one.stdout)) == {"input", "item_0007"}

    verify = mfm(home, "verify", run_id)
    assert verify.exit_code == 0, verify.output
    assert verify.stdout.startswith(f"verified: run {run_id} ({len(envelopes)} events, ")


def test_sequential_and_fan_out_give_the_same_final_snapshot(home: Path) -> None:
    sequential = run_json(home, "fanout_demo", "--input", '{"items": 20}')
    parallel = run_json(home, "fanout_demo", "--input", '{"items": 20}', "--fan-out", "8")
    assert sequential.phase.value == parallel.phase.value == "Completed"
    assert sequential.run_id != parallel.run_id
    assert sequential.final_snapshot_id == parallel.final_snapshot_id


def test_json_output_is_only_the_result(home: Path) -> None:
    result = mfm(home, "run", "etl_demo", "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert set(payload) == {"run_id", "phase", "final_snapshot_id", "failed_state", "error"}
    assert payload["phase"] == "Completed"


def test_flaky_fails_without_retries_and_completes_with_them(home: Path) -> None:
    failed = mfm(home, "run", "flaky_demo")
    assert failed.exit_code == 1
    assert "failed state: flaky_demo.main.call_upstream" in failed.stdout
    assert "upstream_unavailable" in failed.stdout
    as_json = run_json(home, "flaky_demo")
    assert as_json.phase.value == "Failed" and as_json.error is not None
    assert as_json.error.code == "upstream_unavailable"

    ok = mfm(home, "run", "flaky_demo", "--max-attempts", "2", "--backoff-ms", "1")
    assert ok.exit_code == 0, ok.output
    run_id = ok.stdout.split()[1].rstrip(":")
    report = RunReport.model_validate_json(mfm(home, "status", run_id, "--json").stdout)
    upstream = next(s for s in report.states if s.state_id.endswith("call_upstream"))
    assert upstream.attempts == 2 and upstream.status.value == "completed"
    assert upstream.last_error_code == "upstream_unavailable"
    context = json.loads(mfm(home, "context", run_id).stdout)
    assert context["result"] == {"succeeded_on_attempt": 1}

    # Resuming a finished failed run is idempotent: same result, nothing appended.
    failed_id = failed.stdout.split()[1].rstrip(":")
    before = mfm(home, "events", failed_id, "--json").stdout
    again = mfm(home, "resume", failed_id)
    assert again.exit_code == 1 and "upstream_unavailable" in again.stdout
    assert mfm(home, "events", failed_id, "--json").stdout == before


def test_dry_run_skips_side_effect_states(home: Path, ops_dir: Path) -> None:
    result = mfm(home, "--ops", OPS_MODULE, "run", "cli_side_effect_demo", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "skipped states: 1" in result.stdout
    assert "skipped cli_side_effect_demo.main.apply" in result.stdout
    assert "skipped cli_side_effect_demo.main.compute" not in result.stdout
    run_id = result.stdout.split()[1].rstrip(":")
    context = json.loads(mfm(home, "--ops", OPS_MODULE, "context", run_id).stdout)
    assert context == {"computed": 42, "input": {}}
    report = RunReport.model_validate_json(
        mfm(home, "--ops", OPS_MODULE, "status", run_id, "--json").stdout
    )
    assert {s.state_id: s.status.value for s in report.states} == {
        "cli_side_effect_demo.main.compute": "completed",
        "cli_side_effect_demo.main.apply": "skipped",
    }
    # Without the module the plan cannot be re-derived: status falls back to the history.
    fallback = mfm(home, "status", run_id, "--json")
    assert fallback.exit_code == 0
    assert "plan unavailable (operation_not_found)" in fallback.stderr
    history_only = RunReport.model_validate_json(fallback.stdout)
    assert [s.status.value for s in history_only.states] == ["completed", "completed"]
    live = mfm(home, "--ops", OPS_MODULE, "run", "cli_side_effect_demo")
    assert live.exit_code == 0 and "skipped" not in live.stdout
    live_id = live.stdout.split()[1].rstrip(":")
    live_context = json.loads(mfm(home, "--ops", OPS_MODULE, "context", live_id).stdout)
    assert live_context == {"applied": True, "computed": 42, "input": {}}


def test_resume_recovers_an_orphaned_attempt(home: Path) -> None:
    registry = OperationRegistry.default()
    config = RunConfig()
    prepared = prepare_run(registry, "etl_demo", {}, config)
    stores = open_stores(None, None, home)
    try:
        manifest_id, initial = stored_and_validated(stores.artifacts, prepared)
        run_id, initial_id = record_run_start(
            stores.events,
            stores.artifacts,
            plan=prepared.plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
        )
        first = StateId(prepared.plan.canonical_order()[0])
        entered = EventDraft(
            event=StateEntered(state_id=first, attempt=0, base_snapshot_id=initial_id),
            ts_millis=1,
            state_id=first,
            attempt=0,
        )
        stores.events.append(run_id, 1, [entered.at(run_id, 2)])
    finally:
        stores.close()

    running = RunReport.model_validate_json(mfm(home, "status", run_id, "--json").stdout)
    assert running.phase.value == "Running"
    assert [s.status.value for s in running.states] == ["running", "pending", "pending", "pending"]
    unfinished = mfm(home, "context", run_id)
    assert unfinished.exit_code == 2
    assert error_line(unfinished).startswith("error[run_not_finished]: ")

    resumed = mfm(home, "resume", run_id)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout.startswith(f"run {run_id}: Completed")
    report = RunReport.model_validate_json(mfm(home, "status", run_id, "--json").stdout)
    assert report.states[0].attempts == 2
    assert report.states[0].last_error_code == "orphan_attempt_recovered"
    assert mfm(home, "verify", run_id).exit_code == 0


def test_runs_newest_first(home: Path) -> None:
    older = run_json(home, "etl_demo")
    newer = run_json(home, "fanout_demo", "--input", '{"items": 2}')
    listing = mfm(home, "runs", "--json")
    assert listing.exit_code == 0
    rows = json.loads(listing.stdout)
    assert [r["run_id"] for r in rows] == [newer.run_id, older.run_id]
    assert rows[0]["started_ms"] >= rows[1]["started_ms"]
    assert [r["op_id"] for r in rows] == ["fanout_demo", "etl_demo"]
    limited = json.loads(mfm(home, "runs", "--json", "--limit", "1").stdout)
    assert [r["run_id"] for r in limited] == [newer.run_id]
    text = mfm(home, "runs").stdout
    assert text.index(newer.run_id) < text.index(older.run_id)


def test_artifact_bytes_to_stdout_and_file(home: Path, tmp_path: Path) -> None:
    result = run_json(home, "etl_demo")
    assert result.final_snapshot_id is not None
    raw = mfm(home, "artifact", result.final_snapshot_id)
    assert raw.exit_code == 0
    stores = open_stores(None, None, home)
    try:
        expected = stores.artifacts.get(result.final_snapshot_id)
    finally:
        stores.close()
    assert raw.stdout_bytes == expected
    target = tmp_path / "snapshot.json"
    to_file = mfm(home, "artifact", result.final_snapshot_id, "-o", str(target))
    assert to_file.exit_code == 0 and to_file.stdout == ""
    assert target.read_bytes() == expected

    bad_id = mfm(home, "artifact", "not-an-id")
    assert bad_id.exit_code == 2
    missing = mfm(home, "artifact", "0" * 64)
    assert missing.exit_code == 2  # an id the user typed that the store lacks
    assert error_line(missing).startswith("error[")


def test_verify_reports_a_missing_artifact(home: Path) -> None:
    result = run_json(home, "fanout_demo", "--input", '{"items": 3}', "--fan-out", "2")
    report = RunReport.model_validate_json(mfm(home, "status", result.run_id, "--json").stdout)
    victim = ArtifactId(report.states[1].snapshot_id or "")
    (home / "artifacts" / victim[:2] / victim).unlink()
    verdict = mfm(home, "verify", result.run_id)
    assert verdict.exit_code == 1
    assert verdict.stdout.startswith(f"NOT VERIFIED: run {result.run_id}")
    assert victim in verdict.stdout
    as_json = json.loads(mfm(home, "verify", result.run_id, "--json").stdout)
    assert as_json["ok"] is False and as_json["violations"]


# -- ops and graph ------------------------------------------------------------------------------


def test_ops_lists_operations_and_pipelines(home: Path, ops_dir: Path) -> None:
    text = mfm(home, "--ops", OPS_MODULE, "ops")
    assert text.exit_code == 0
    for name in ("fanout_demo", "flaky_demo", "etl_demo", "cli_side_effect_demo"):
        assert name in text.stdout
    payload = json.loads(mfm(home, "ops", "--json").stdout)
    ops = {(o["op_id"], o["op_version"]) for o in payload["operations"]}
    assert ("fanout_demo", "1") in ops
    assert [p["machine_id"] for p in payload["pipelines"]] == ["etl_demo"]


def test_graph_in_every_format(home: Path) -> None:
    text = mfm(home, "graph", "etl_demo")
    assert text.exit_code == 0
    assert text.stdout.splitlines() == [
        "plan etl_demo: 4 states, 3 edges",
        "1. etl_demo.extract.extract  [fetch_data]",
        "2. etl_demo.transform.square  [compute]",
        "   after: etl_demo.extract.extract",
        "3. etl_demo.load.total  [compute]",
        "   after: etl_demo.transform.square",
        "4. etl_demo.load.tidy  [report]",
        "   after: etl_demo.load.total",
    ]
    mermaid = mfm(home, "graph", "fanout_demo", "--input", '{"items": 2}', "--format", "mermaid")
    assert mermaid.exit_code == 0
    assert mermaid.stdout.splitlines() == [
        "flowchart TD",
        '    s0["fanout_demo.main.item_0000<br/>[compute]"]',
        '    s1["fanout_demo.main.item_0001<br/>[compute]"]',
        '    s2["fanout_demo.main.join<br/>[report]"]',
        "    s0 --> s2",
        "    s1 --> s2",
    ]
    dot = mfm(home, "graph", "flaky_demo", "--format", "dot")
    assert dot.exit_code == 0
    assert dot.stdout.splitlines() == [
        'digraph "flaky_demo" {',
        "    node [shape=box];",
        '    "flaky_demo.main.prepare" [label="flaky_demo.main.prepare\\n[config]"];',
        '    "flaky_demo.main.call_upstream" [label="flaky_demo.main.call_upstream\\n'
        '[fetch_data]"];',
        '    "flaky_demo.main.prepare" -> "flaky_demo.main.call_upstream";',
        "}",
    ]
    plan = prepare_run(OperationRegistry.default(), "etl_demo", {}, RunConfig()).plan
    assert render_plan(plan, "text") == text.stdout


# -- errors and exit codes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["run", "fanout_demo", "--input", '{"items": }'], "input_invalid_json"),
        (["run", "no_such_op"], "operation_not_found"),
        (["run", "fanout_demo", "--input", '{"items": 2.5}'], "float_not_allowed"),
        (["run", "fanout_demo", "--input", '{"items": 0}'], "op_config_invalid"),
        (["run", "fanout_demo", "--fan-out", "0"], "usage"),
        (["graph", "fanout_demo", "--format", "png"], "usage"),
        (["status", "not a run id"], "invalid_run_id"),
        (["no-such-command"], "usage"),
    ],
)
def test_invalid_input_exits_2_with_one_error_line(home: Path, args: list[str], code: str) -> None:
    result = mfm(home, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert error_line(result).startswith(f"error[{code}]: ")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "fanout_demo", "--input", '{"note": "my password is hunter2"}'],
        ["run", "fanout_demo", "--input", '{"access_token": "hunter2"}'],
        ["run", "fanout_demo", "--skip-tag", "password=hunter2"],
        ["run", "fanout_demo", "--fan-out", "password=hunter2"],
        ["graph", "fanout_demo", "--input", '{"hunter2": "bearer abc"}'],
    ],
)
def test_secret_input_is_rejected_and_never_echoed(home: Path, args: list[str]) -> None:
    result = mfm(home, *args)
    assert result.exit_code == 2, result.output
    assert "hunter2" not in result.output and "hunter2" not in result.stderr
    assert error_line(result).startswith("error[")
    assert not (home / "events.sqlite3").exists() or mfm(home, "runs", "--json").stdout == "[]\n"


def test_input_from_file_and_unreadable_file(home: Path, tmp_path: Path) -> None:
    source = tmp_path / "input.json"
    source.write_text('{"items": 3}')
    result = run_json(home, "fanout_demo", "--input", f"@{source}")
    assert result.phase.value == "Completed"
    missing = mfm(home, "run", "fanout_demo", "--input", f"@{tmp_path / 'absent.json'}")
    assert missing.exit_code == 2
    assert error_line(missing).startswith("error[input_file_unreadable]: ")


def test_unknown_run_and_state(home: Path) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    status = mfm(home, "status", unknown)
    assert status.exit_code == 2  # a run id nobody knows is bad input
    assert error_line(status).startswith("error[run_not_found]: ")
    assert mfm(home, "events", unknown).exit_code == 2
    assert mfm(home, "resume", unknown).exit_code == 2
    done = run_json(home, "etl_demo")
    no_state = mfm(home, "context", done.run_id, "--state", "etl_demo.load.nothing")
    assert no_state.exit_code == 2
    assert error_line(no_state).startswith("error[state_not_found]: ")


def test_unreachable_redis_store_exits_3(home: Path) -> None:
    result = mfm(home, "--events-url", "redis://user:s3cr3tpw@127.0.0.1:1/0", "runs")
    assert result.exit_code == 3
    line = error_line(result)
    assert line.startswith("error[storage_unavailable]: ")
    assert "s3cr3tpw" not in result.output


def test_unwritable_sqlite_store_exits_3(home: Path) -> None:
    url = "sqlite:////proc/mfm-no-such-dir/events.sqlite3"
    result = mfm(home, "--events-url", url, "run", "etl_demo")
    assert result.exit_code == 3
    assert error_line(result).startswith("error[sqlite_open_failed]: ")
    # A read command creates nothing: a store that is not there has no runs.
    listing = mfm(home, "--events-url", url, "runs")
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.startswith("no runs in sqlite://")
    assert "/proc/mfm-no-such-dir/events.sqlite3 (no event store there yet)" in listing.stdout


def test_debug_shows_the_traceback(home: Path) -> None:
    result = mfm(home, "--debug", "run", "no_such_op")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error[operation_not_found]: ")


# -- live progress ------------------------------------------------------------------------------


def test_progress_tracker_counts_a_real_run(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_running, "_wants_progress", lambda as_json: not as_json)
    result = mfm(home, "run", "flaky_demo", "--max-attempts", "2")
    assert result.exit_code == 0, result.output
    assert "2/2 states" in result.stderr
    assert "failed attempts 1" in result.stderr
    assert result.stdout.splitlines()[0].endswith(": Completed")


def test_live_progress_renders_on_a_terminal() -> None:
    tracker = ProgressTracker(total=3)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160)
    run_id = RunId.mint()
    snapshot = ArtifactId("a" * 64)
    with LiveProgress(console, "demo", tracker):
        for seq, name in enumerate(["op.main.a", "op.main.b"], start=1):
            tracker(
                EventDraft(
                    event=StateEntered(
                        state_id=StateId(name), attempt=0, base_snapshot_id=snapshot
                    ),
                    ts_millis=0,
                ).at(run_id, seq)
            )
    counts = tracker.counts()
    assert (counts.done, counts.running, counts.events) == (0, 2, 2)
    assert "0/3 states" in buffer.getvalue() and "running 2" in buffer.getvalue()


# -- a real process -----------------------------------------------------------------------------


def test_console_script_in_a_subprocess(home: Path) -> None:
    script = Path(sys.executable).with_name("mfm")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mfm_dist.cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFM_")}
    env["MFM_HOME"] = str(home)
    done = subprocess.run(
        [*command, "run", "fanout_demo", "--input", '{"items": 50}', "--fan-out", "8", "--json"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b"", done.stderr.decode()  # nothing on stderr: no progress, no noise
    result = RunResult.model_validate_json(done.stdout)
    assert result.phase.value == "Completed"
    events = subprocess.run(
        [*command, "events", str(result.run_id), "--json"],
        capture_output=True,
        env=env,
        timeout=120,
        check=True,
    )
    envelopes = [EventEnvelope.from_bytes(line) for line in events.stdout.splitlines()]
    assert envelopes[-1].event.final_snapshot_id == result.final_snapshot_id  # type: ignore[union-attr]
    bad = subprocess.run(
        [*command, "run", "fanout_demo", "--input", "{"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode().startswith("error[input_invalid_json]: ")


def test_verify_of_an_unknown_run_is_invalid_input(home: Path) -> None:
    unknown = mfm(home, "verify", "00000000-0000-4000-8000-000000000000")
    assert unknown.exit_code == 2
    assert error_line(unknown).startswith("error[run_not_found]: ")


def test_ops_modules_in_the_working_directory(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "cwd_ops_mod.py"
    module.write_text(
        "from mfm_dist import FnState, Operation, StateGraph\n"
        "class Hello(Operation):\n"
        "    op_id = 'hello_cwd'\n"
        "    def expand(self, op_path, op_config, run_config):\n"
        "        g = StateGraph()\n"
        "        g.add(f'{op_path}.hi', FnState(lambda c, i, r: c.set('hi', 1)))\n"
        "        return g\n"
        "def register_operations(registry):\n"
        "    registry.register(Hello())\n"
    )
    monkeypatch.chdir(tmp_path)
    result = mfm(home, "--ops", "cwd_ops_mod", "run", "hello_cwd")
    assert result.exit_code == 0, result.output


def test_context_state_by_unique_suffix(home: Path) -> None:
    done = run_json(home, "fanout_demo", "--input", '{"items": 3}')
    by_suffix = mfm(home, "context", str(done.run_id), "--state", "item_0001")
    by_full = mfm(home, "context", str(done.run_id), "--state", "fanout_demo.main.item_0001")
    assert by_suffix.exit_code == 0 and by_suffix.stdout == by_full.stdout
    missing = mfm(home, "context", str(done.run_id), "--state", "nope")
    assert missing.exit_code == 2
    assert error_line(missing).startswith("error[state_not_found]: ")


def test_status_and_wait_name_a_minimal_profile_merge_conflict(tmp_path: Path) -> None:
    """The `Minimal` profile keeps no `context_merge_conflict` event; `mfm status` and
    `mfm wait` still name the conflict (recomputed from the recorded deltas), as the run did."""
    home = tmp_path / "home"
    ops = ["--ops", "support.dist_ops"]
    ran = mfm(home, *ops, "run", "clash_demo", "--fan-out", "2", "--profile", "minimal", "--json")
    assert ran.exit_code == 1, ran.output
    result = RunResult.model_validate_json(ran.stdout)
    assert result.error is not None and result.error.code == "context_merge_conflict"
    status = mfm(home, *ops, "status", str(result.run_id), "--json")
    assert status.exit_code in (0, 1), status.output
    report = json.loads(status.stdout)
    assert report["phase"] == "Failed" and report["error"]["code"] == "context_merge_conflict"
    waited = mfm(home, *ops, "wait", str(result.run_id), "--json")
    assert waited.exit_code == 1, waited.output
    assert RunResult.model_validate_json(waited.stdout).error == result.error
    # The dashboard's API answers what `mfm status --json` does.
    from starlette.testclient import TestClient

    from mfm_dist.ui.app import create_app
    from support.ui_helpers import dashboard_for

    api = TestClient(create_app(dashboard_for(home=str(home), ops_modules=("support.dist_ops",))))
    assert api.get(f"/api/runs/{result.run_id}").json() == report
