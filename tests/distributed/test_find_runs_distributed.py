"""Finding runs on the distributed backend, in process against a real redis-server (the
`worker_harness`): labels from submissions (`workers/submit.py`), `mfm runs` filters over the
Redis listing indexes, id prefixes, `mfm rerun --backend celery`, and Ctrl-C while
`mfm run --backend celery` follows a run (the run continues)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mfm_dist.cli.main import cli
from mfm_dist.engine.history import RunHistory
from mfm_dist.ids import RunId
from mfm_dist.reports import RunReport
from support.worker_harness import Harness
from workers.runtime import reset_runtime
from workers.submit import receive


@pytest.fixture(autouse=True)
def _fresh_runtime() -> Iterator[None]:
    """The CLI's submissions use this process's runtime: built from this test's settings."""
    reset_runtime()
    yield
    reset_runtime()


def mfm(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)  # stores from MFM_*_URL


def listing(*args: str) -> list[dict[str, Any]]:
    result = mfm("runs", "--json", *args)
    assert result.exit_code == 0, result.output + result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def ids(*args: str) -> list[str]:
    return [row["run_id"] for row in listing(*args)]


def submit(h: Harness, delivery: str, **request: Any) -> str:
    reply = receive(h.rt, (), request, delivery)
    assert "run_id" in reply, reply
    return str(reply["run_id"])


def final_snapshot(h: Harness, rid: str) -> str:
    completed = RunHistory.load(h.rt.events, RunId(rid)).completed
    assert completed is not None and completed.final_snapshot_id is not None
    return str(completed.final_snapshot_id)


def test_submitted_labels_filter_the_cluster_listing(h: Harness) -> None:
    jan1 = submit(h, "d1", op="chain_demo", input={"states": 2},
                  labels={"backfill": "jan", "partition": "2026-01-01"})  # fmt: skip
    time.sleep(0.005)
    jan2 = submit(h, "d2", op="chain_demo", input={"states": 3},
                  labels={"backfill": "jan", "partition": "2026-01-02"})  # fmt: skip
    time.sleep(0.005)
    other = submit(h, "d3", op="fanout_demo", input={"items": 2}, labels={"team": "ml"})
    time.sleep(0.005)
    plain = submit(h, "d4", op="chain_demo", input={"states": 1})
    h.drive(jan1)
    h.drive(other)

    assert ids() == [plain, other, jan2, jan1]
    assert ids("--backfill", "jan") == [jan2, jan1]
    assert ids("--label", "backfill=jan", "--label", "partition=2026-01-02") == [jan2]
    assert ids("--op", "chain_demo") == [plain, jan2, jan1]
    assert ids("--phase", "Completed") == [other, jan1]
    assert ids("--phase", "Running", "--backfill", "jan") == [jan2]
    assert ids("--op", "chain_demo", "--phase", "Running") == [plain, jan2]
    assert ids("--label", "team=ml", "--phase", "Completed") == [other]
    started = {row["run_id"]: row["started_ms"] for row in listing()}
    since = datetime.fromtimestamp(started[jan2] / 1000, UTC).isoformat(timespec="milliseconds")
    assert ids("--since", since) == [plain, other, jan2]
    assert ids("--until", since, "--backfill", "jan") == [jan1]
    assert ids("--backfill", "jan", "--limit", "1") == [jan2]

    by_id = {row["run_id"]: row for row in listing()}
    assert by_id[jan1]["labels"] == {"backfill": "jan", "partition": "2026-01-01"}
    assert by_id[jan1]["duration_ms"] == by_id[jan1]["ended_ms"] - by_id[jan1]["started_ms"]
    assert by_id[jan2]["ended_ms"] is None and by_id[jan2]["duration_ms"] is None
    assert by_id[plain]["labels"] == {}
    text = mfm("runs", "--backfill", "jan")
    assert "backfill=jan, partition=2026-01-01" in text.stdout

    # Prefixes, on the Redis run-id index.
    status = mfm("status", jan1[:8], "--json")
    assert status.exit_code == 0, status.output + status.stderr
    assert RunReport.model_validate_json(status.stdout).run_id == jan1
    unknown_prefix = next(p for p in ("00000000", "ffffffff") if not any(
        r.startswith(p) for r in (jan1, jan2, other, plain)))  # fmt: skip
    unknown = mfm("status", unknown_prefix)
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith(f"error[run_not_found]: run {unknown_prefix} not found in redis://")


def test_rerun_on_the_cluster(h: Harness) -> None:
    original = submit(h, "r1", op="fanout_demo", input={"items": 4},
                      config={"execution_mode": {"FanOutJoin": {"max_concurrency": 4}}},
                      labels={"backfill": "jan", "partition": "p1"})  # fmt: skip
    h.drive(original)
    again = mfm("rerun", original[:8], "--backend", "celery", "--detach", "--json")
    assert again.exit_code == 0, again.output + again.stderr
    new_id = json.loads(again.stdout)["run_id"]
    assert new_id != original
    h.drive(new_id)
    assert final_snapshot(h, new_id) == final_snapshot(h, original)
    (row,) = listing("--label", f"rerun_of={original}")
    assert row["run_id"] == new_id and row["phase"] == "Completed"
    assert row["labels"] == {"backfill": "jan", "partition": "p1", "rerun_of": original}
    assert ids("--backfill", "jan") == [new_id, original]


def test_ctrl_c_while_following_a_cluster_run_leaves_it_running(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sleep = time.sleep

    def interrupted(seconds: float) -> None:  # Ctrl-C at the first poll of the follow loop
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        real_sleep(seconds)

    # `time.sleep` is patched process-wide: nothing else may sleep on the main thread first
    # (the manifest's build info would wait for a `git` subprocess).
    monkeypatch.setenv("MFM_GIT_COMMIT", "0" * 40)
    monkeypatch.setattr(time, "sleep", interrupted)
    result = mfm(
        "run", "chain_demo", "--input", '{"states": 2}', "--backend", "celery",
        "--label", "team=data",
    )  # fmt: skip
    monkeypatch.setattr(time, "sleep", real_sleep)
    assert result.exit_code == 130, result.output + result.stderr
    first, last = result.stderr.splitlines()[0], result.stderr.splitlines()[-1]
    assert first.startswith("started run ")
    assert first.endswith(" (chain_demo, 2 states) on the cluster")
    rid = first.split()[2]
    assert last.startswith(
        f"error[interrupted]: stopped following run {rid}; it continues on the cluster"
    )
    assert last.endswith(f" wait {rid}")
    (row,) = listing("--label", "team=data")
    assert row["run_id"] == rid and row["phase"] == "Running"
    h.drive(rid)
    waited = mfm("wait", rid[:8], "--timeout", "10", "--json")
    assert waited.exit_code == 0, waited.output + waited.stderr
    assert json.loads(waited.stdout)["phase"] == "Completed"
    assert ids("--label", "team=data", "--phase", "Completed") == [rid]
