"""Finding runs on the CLI, on the embedded stores (SQLite + files): `mfm runs` filters with
duration and labels, `mfm run --label`, unique id prefixes for runs and artifacts, and
`mfm rerun`. The distributed side (Redis, submissions, the cluster) is in
`test_find_runs_distributed.py`."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mfm_dist.artifacts import ArtifactKind
from mfm_dist.cli.main import cli
from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    store_manifest,
    stored_and_validated,
    submission_of,
)
from mfm_dist.engine.local import LocalEngine
from mfm_dist.events import DomainEvent, EventEnvelope
from mfm_dist.ids import RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.reports import RunReport
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.stores.urls import open_stores
from mfm_dist.submission import SubmissionRecord


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "mfm-home"


def mfm(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def run_json(home: Path, *args: str) -> RunResult:
    result = mfm(home, "run", *args, "--json")
    assert result.exit_code in (0, 1), result.output + result.stderr
    return RunResult.model_validate_json(result.stdout)


def rows(home: Path, *args: str) -> list[dict[str, Any]]:
    listing = mfm(home, "runs", "--json", *args)
    assert listing.exit_code == 0, listing.output + listing.stderr
    found: list[dict[str, Any]] = json.loads(listing.stdout)
    return found


def ids(home: Path, *args: str) -> list[str]:
    return [row["run_id"] for row in rows(home, *args)]


def error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def report(home: Path, run: str) -> RunReport:
    status = mfm(home, "status", run, "--json")
    assert status.exit_code == 0, status.output + status.stderr
    return RunReport.model_validate_json(status.stdout)


def start_with_id(home: Path, run_id: str, op: str = "etl_demo", run_input: Any = None) -> None:
    """A run with a chosen id (to make id prefixes collide), through the Python API."""
    registry = OperationRegistry.default()
    prepared = prepare_run(registry, op, run_input or {}, RunConfig())
    stores = open_stores(None, None, home)
    try:
        manifest_id = store_manifest(stores.artifacts, prepared.manifest)
        result = LocalEngine(stores.events, stores.artifacts, registry).start(
            plan=prepared.plan,
            run_config=prepared.run_config,
            manifest=prepared.manifest,
            manifest_id=manifest_id,
            initial_context=prepared.initial_context,
            run_id=RunId(run_id),
        )
    finally:
        stores.close()
    assert result.phase == RunPhase.COMPLETED


# -- mfm runs: filters, columns, JSON ------------------------------------------------------------


def test_runs_filters_each_alone_and_combined(home: Path) -> None:
    a = run_json(home, "etl_demo", "--label", "backfill=jan", "--label", "part=01")
    time.sleep(0.005)
    b = run_json(home, "flaky_demo", "--label", "backfill=jan", "--label", "part=02")
    time.sleep(0.005)
    c = run_json(home, "fanout_demo", "--input", '{"items": 2}', "--label", "team=ml")
    time.sleep(0.005)
    d = run_json(home, "etl_demo")
    assert b.phase == RunPhase.FAILED and {a.phase, c.phase, d.phase} == {RunPhase.COMPLETED}
    a_, b_, c_, d_ = (str(r.run_id) for r in (a, b, c, d))
    started = {row["run_id"]: row["started_ms"] for row in rows(home)}

    assert ids(home) == [d_, c_, b_, a_]
    assert ids(home, "--op", "etl_demo") == [d_, a_]
    assert ids(home, "--op", "no_such_op") == []
    assert ids(home, "--phase", "Failed") == [b_]
    assert ids(home, "--phase", "completed") == [d_, c_, a_]  # any case
    assert ids(home, "--phase", "Running") == []
    assert ids(home, "--label", "backfill=jan") == [b_, a_]
    assert ids(home, "--label", "backfill=jan", "--label", "part=01") == [a_]
    assert ids(home, "--label", "team=ml") == [c_]
    assert ids(home, "--backfill", "jan") == [b_, a_]
    assert ids(home, "--backfill", "feb") == []
    assert ids(home, "--backfill", "jan", "--op", "etl_demo") == [a_]
    assert ids(home, "--backfill", "jan", "--phase", "Failed") == [b_]
    assert ids(home, "--backfill", "jan", "--label", "part=02") == [b_]
    assert ids(home, "--since", iso(started[c_])) == [d_, c_]
    assert ids(home, "--until", iso(started[c_])) == [b_, a_]
    assert ids(home, "--since", iso(started[b_]), "--until", iso(started[d_])) == [c_, b_]
    assert ids(home, "--op", "etl_demo", "--since", iso(started[b_])) == [d_]
    assert ids(home, "--since", "1h") == [d_, c_, b_, a_]
    assert ids(home, "--until", "1h") == []
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert ids(home, "--since", tomorrow) == []
    assert ids(home, "--until", tomorrow) == [d_, c_, b_, a_]
    assert ids(home, "--backfill", "jan", "--limit", "1") == [b_]
    assert ids(home, "--limit", "0") == [d_, c_, b_, a_]

    by_id = {row["run_id"]: row for row in rows(home)}
    first = by_id[a_]
    assert first["labels"] == {"backfill": "jan", "part": "01"}
    assert first["duration_ms"] == first["ended_ms"] - first["started_ms"] >= 0
    assert by_id[d_]["labels"] == {}
    assert set(first) >= {"run_id", "op_id", "started_ms", "phase", "head_seq", "labels",
                          "ended_ms", "duration_ms", "interrupted", "driver"}  # fmt: skip

    text = mfm(home, "runs")
    header = next(line for line in text.stdout.splitlines() if line.startswith("run "))
    assert [c.strip() for c in header.replace("┃", "|").split("|")] == [
        "run", "op", "started (UTC)", "duration", "phase", "events", "labels"
    ]  # fmt: skip
    line_a = next(line for line in text.stdout.splitlines() if line.startswith(a_))
    assert "backfill=jan, part=01" in line_a and "Completed" in line_a
    none = mfm(home, "runs", "--backfill", "feb")
    assert none.exit_code == 0 and none.stdout.startswith("no runs matching the filters in ")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["runs", "--since", "yesterday"], "time_invalid"),
        (["runs", "--until", "2026-13-40"], "time_invalid"),
        (["runs", "--since", "2h", "--until", "3h"], "time_invalid"),
        (["runs", "--phase", "bogus"], "usage"),
        (["runs", "--label", "backfill"], "label_invalid"),
        (["runs", "--label", "Team=x"], "label_invalid"),
        (["runs", "--backfill", "jan", "--label", "backfill=feb"], "label_invalid"),
        (["run", "etl_demo", "--label", "=x"], "label_invalid"),
        (["run", "etl_demo", "--label", "team"], "label_invalid"),
        (["run", "etl_demo", "--label", "a=1", "--label", "a=2"], "label_invalid"),
        (["run", "etl_demo", "--label", "team=" + "x" * 201], "label_invalid"),
        (["run", "etl_demo", "--label", "note=my password is hunter2"], "secrets_detected"),
        (["runs", "--label", "note=bearer hunter2"], "secrets_detected"),
    ],
)
def test_bad_filters_and_labels_are_one_error_line_and_exit_2(
    home: Path, args: list[str], code: str
) -> None:
    result = mfm(home, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert error_line(result).startswith(f"error[{code}]: ")
    assert "hunter2" not in result.stderr
    assert rows(home) == []  # no run was started


# -- mfm run --label: kept with the run, never in its manifest -------------------------------------


def test_labels_are_recorded_with_the_run_and_change_no_snapshot(home: Path) -> None:
    plain = run_json(home, "fanout_demo", "--input", '{"items": 3}', "--fan-out", "2")
    labelled = run_json(
        home, "fanout_demo", "--input", '{"items": 3}', "--fan-out", "2",
        "--label", "team=data", "--label", "ticket=ops-42",
    )  # fmt: skip
    assert labelled.final_snapshot_id == plain.final_snapshot_id
    assert report(home, labelled.run_id).manifest_id == report(home, plain.run_id).manifest_id
    events = mfm(home, "events", labelled.run_id, "--json").stdout_bytes.splitlines()
    envelopes = [EventEnvelope.from_bytes(line) for line in events]
    second = envelopes[1]
    assert isinstance(second.event, DomainEvent) and second.event.name == "run_submitted"
    assert second.seq == 2 and second.state_id is None
    record = submission_of(envelopes)
    assert record is not None and record.labels == {"team": "data", "ticket": "ops-42"}
    plain_events = mfm(home, "events", plain.run_id, "--json").stdout_bytes.splitlines()
    assert len(envelopes) == len(plain_events) + 1  # the record is the only difference
    assert mfm(home, "verify", labelled.run_id).exit_code == 0
    assert mfm(home, "replay", labelled.run_id).exit_code == 0
    (row,) = rows(home, "--label", "ticket=ops-42")
    assert row["run_id"] == labelled.run_id and row["labels"] == record.labels


def test_an_interrupted_labelled_run_resumes_and_keeps_its_labels(home: Path) -> None:
    registry = OperationRegistry.default()
    prepared = prepare_run(registry, "etl_demo", {}, RunConfig())
    stores = open_stores(None, None, home)
    try:
        manifest_id, initial = stored_and_validated(stores.artifacts, prepared)
        record = SubmissionRecord(fingerprint="0" * 64, labels={"team": "x"}, submitted_ms=1)
        rid, _ = record_run_start(
            stores.events,
            stores.artifacts,
            plan=prepared.plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
            submission=record,
        )
    finally:
        stores.close()
    assert [r["phase"] for r in rows(home, "--label", "team=x")] == ["Running"]
    resumed = mfm(home, "resume", str(rid)[:8])
    assert resumed.exit_code == 0, resumed.output + resumed.stderr
    (row,) = rows(home, "--label", "team=x", "--phase", "Completed")
    assert row["run_id"] == str(rid) and row["ended_ms"] is not None
    assert mfm(home, "verify", str(rid)).exit_code == 0


# -- id prefixes ----------------------------------------------------------------------------------


TWIN_A = "abcdef01-0000-4000-8000-00000000000a"
TWIN_B = "abcdef01-1111-4000-8000-00000000000b"


def test_every_run_command_takes_a_unique_prefix(home: Path) -> None:
    start_with_id(home, TWIN_A, "fanout_demo", {"items": 2})
    full = report(home, TWIN_A)
    prefix = TWIN_A[:8]
    by_prefix = report(home, prefix)
    assert by_prefix == full
    events = mfm(home, "events", prefix, "--json").stdout
    assert events == mfm(home, "events", TWIN_A, "--json").stdout
    assert mfm(home, "context", prefix).stdout == mfm(home, "context", TWIN_A).stdout
    one = mfm(home, "context", prefix, "--state", "item_0001")
    assert one.exit_code == 0 and "item_0001" in one.stdout
    verify = mfm(home, "verify", prefix)
    assert verify.exit_code == 0 and verify.stdout.startswith(f"verified: run {TWIN_A} ")
    replay = mfm(home, "replay", prefix)
    assert replay.exit_code == 0 and f"replay matches: run {TWIN_A}" in replay.stdout
    resumed = mfm(home, "resume", prefix)  # finished: its result, nothing appended
    assert resumed.exit_code == 0 and resumed.stdout.startswith(f"run {TWIN_A}: Completed")
    waited = mfm(home, "wait", prefix, "--timeout", "5", "--json")
    assert waited.exit_code == 0
    assert RunResult.model_validate_json(waited.stdout).run_id == TWIN_A
    assert report(home, TWIN_A).head_seq == full.head_seq


def test_ambiguous_short_and_unknown_run_prefixes(home: Path) -> None:
    start_with_id(home, TWIN_A)
    start_with_id(home, TWIN_B)
    for command in (["status"], ["events"], ["context"], ["verify"], ["resume"], ["rerun"]):
        ambiguous = mfm(home, *command, TWIN_A[:8])
        assert ambiguous.exit_code == 2, (command, ambiguous.output)
        line = error_line(ambiguous)
        assert line.startswith("error[id_prefix_ambiguous]: run id prefix abcdef01 matches 2 ")
        assert TWIN_A in line and TWIN_B in line
    assert report(home, TWIN_B[:10]).run_id == TWIN_B  # long enough to be unique
    short = mfm(home, "status", "abcdef0")
    assert short.exit_code == 2
    assert error_line(short).startswith("error[id_prefix_too_short]: run id prefix abcdef0 ")
    unknown = mfm(home, "status", "abcdef02")
    assert unknown.exit_code == 2
    assert error_line(unknown) == (
        f"error[run_not_found]: run abcdef02 not found in sqlite://{home.absolute()}/events.sqlite3"
    )
    not_an_id = mfm(home, "status", "abcdef0Z")
    assert error_line(not_an_id).startswith("error[invalid_run_id]: ")
    assert len(rows(home)) == 2  # nothing was started by any of these


def _colliding_blobs() -> tuple[bytes, bytes]:
    """Two byte strings whose SHA-256 ids share their first 8 hex digits (birthday search)."""
    seen: dict[bytes, bytes] = {}
    n = 0
    while True:
        data = b"blob %d" % n
        head = hashlib.sha256(data).digest()[:4]
        if head in seen:
            return seen[head], data
        seen[head] = data
        n += 1


def test_artifact_takes_the_short_snapshot_ids_status_prints(home: Path) -> None:
    done = run_json(home, "etl_demo")
    text = mfm(home, "status", str(done.run_id)).stdout
    row = next(line for line in text.splitlines() if line.startswith("etl_demo.load.tidy"))
    short_id = next(cell.strip() for cell in row.split("│") if len(cell.strip()) == 12)
    assert done.final_snapshot_id is not None and done.final_snapshot_id.startswith(short_id)
    by_short = mfm(home, "artifact", short_id)
    assert by_short.exit_code == 0, by_short.output + by_short.stderr
    assert by_short.stdout_bytes == mfm(home, "artifact", done.final_snapshot_id).stdout_bytes
    assert json.loads(by_short.stdout) == json.loads(mfm(home, "context", str(done.run_id)).stdout)

    first, second = _colliding_blobs()
    stores = open_stores(None, None, home)
    try:
        one = stores.artifacts.put(ArtifactKind.OUTPUT, first)
        two = stores.artifacts.put(ArtifactKind.OUTPUT, second)
    finally:
        stores.close()
    assert one[:8] == two[:8] and one != two
    ambiguous = mfm(home, "artifact", one[:8])
    assert ambiguous.exit_code == 2 and ambiguous.stdout == ""
    line = error_line(ambiguous)
    assert line.startswith(f"error[id_prefix_ambiguous]: artifact id prefix {one[:8]} matches 2 ")
    assert one in line and two in line
    unique = one[: next(i for i in range(8, 64) if one[i] != two[i]) + 1]
    assert mfm(home, "artifact", unique).stdout_bytes == first
    short = mfm(home, "artifact", one[:7])
    assert short.exit_code == 2
    assert error_line(short).startswith("error[id_prefix_too_short]: ")
    absent = next(p for p in (f"{n:08x}" for n in range(99)) if not one.startswith(p))
    unknown = mfm(home, "artifact", absent)
    assert unknown.exit_code == 2
    assert error_line(unknown) == (
        f"error[artifact_not_found]: no artifact {absent} in file://{home.absolute()}/artifacts"
    )


# -- mfm rerun ------------------------------------------------------------------------------------


def test_rerun_starts_a_new_labelled_run_with_the_same_result(home: Path) -> None:
    original = run_json(
        home, "fanout_demo", "--input", '{"items": 5}', "--fan-out", "2", "--label", "team=data"
    )
    again = mfm(home, "rerun", str(original.run_id)[:8])
    assert again.exit_code == 0, again.output + again.stderr
    new_id = again.stdout.split()[1].rstrip(":")
    assert new_id != original.run_id
    assert again.stderr == (
        f"started run {new_id} (fanout_demo, 6 states; rerun of {original.run_id})\n"
    )
    assert f"final snapshot: {original.final_snapshot_id}" in again.stdout
    (row,) = rows(home, "--label", f"rerun_of={original.run_id}")
    assert row["run_id"] == new_id
    assert row["labels"] == {"rerun_of": original.run_id, "team": "data"}
    first, second = report(home, original.run_id), report(home, new_id)
    assert second.manifest_id == first.manifest_id  # the same manifest: same code, same run
    assert second.final_snapshot_id == first.final_snapshot_id
    assert mfm(home, "verify", new_id).exit_code == 0

    quiet = mfm(home, "rerun", new_id, "--label", "team=ml", "--label", "why=check", "--json")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    result = RunResult.model_validate_json(quiet.stdout)
    assert result.final_snapshot_id == original.final_snapshot_id
    (row,) = rows(home, "--label", f"rerun_of={new_id}")
    assert row["labels"] == {"rerun_of": new_id, "team": "ml", "why": "check"}

    pipeline = run_json(home, "etl_demo")
    repeated = mfm(home, "rerun", pipeline.run_id, "--json")
    assert repeated.exit_code == 0, repeated.output + repeated.stderr
    assert RunResult.model_validate_json(repeated.stdout).final_snapshot_id == (
        pipeline.final_snapshot_id
    )


def test_rerun_of_a_failed_run_and_of_an_unknown_one(home: Path) -> None:
    failed = run_json(home, "flaky_demo", "--max-attempts", "1")
    assert failed.phase == RunPhase.FAILED
    again = mfm(home, "rerun", failed.run_id)
    assert again.exit_code == 1  # flaky_demo fails its first attempt, and this is one
    assert "upstream_unavailable" in again.stdout
    (row,) = rows(home, "--label", f"rerun_of={failed.run_id}")
    assert row["phase"] == "Failed" and row["op_id"] == "flaky_demo"
    unknown = mfm(home, "rerun", "00000000-0000-4000-8000-000000000000")
    assert unknown.exit_code == 2
    assert error_line(unknown).startswith("error[run_not_found]: ")


PIPELINE_OPS = textwrap.dedent(
    """
    import os
    from mfm_dist.examples import ETL_PIPELINE

    def register_operations(registry):
        pipeline = ETL_PIPELINE.model_copy(update={"machine_id": "etl_copy"})
        if os.environ.get("ETL_COPY_SHORT"):
            pipeline = pipeline.model_copy(update={"steps": pipeline.steps[:2]})
        registry.register_pipeline(pipeline)
    """
)


@pytest.fixture
def pipeline_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    folder = tmp_path / "ops"
    folder.mkdir()
    (folder / "find_runs_pipeline_ops.py").write_text(PIPELINE_OPS)
    monkeypatch.syspath_prepend(str(folder))
    yield "find_runs_pipeline_ops"
    sys.modules.pop("find_runs_pipeline_ops", None)


def test_rerun_refuses_a_pipeline_registered_with_other_steps(
    home: Path, pipeline_ops: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = mfm(home, "--ops", pipeline_ops, "run", "etl_copy", "--json")
    assert first.exit_code == 0, first.output + first.stderr
    done = RunResult.model_validate_json(first.stdout)
    monkeypatch.setenv("ETL_COPY_SHORT", "1")
    changed = mfm(home, "--ops", pipeline_ops, "rerun", done.run_id)
    assert changed.exit_code == 2
    assert error_line(changed).startswith("error[rerun_plan_changed]: pipeline etl_copy ")
    assert len(rows(home)) == 1
    monkeypatch.delenv("ETL_COPY_SHORT")
    same = mfm(home, "--ops", pipeline_ops, "rerun", done.run_id, "--json")
    assert same.exit_code == 0, same.output + same.stderr
    assert RunResult.model_validate_json(same.stdout).final_snapshot_id == done.final_snapshot_id
