"""The one-call API: `run`, `resume` and `cancel` in this process (`mfm_dist.api`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfm_dist import FnState, OperationRegistry, RunConfig, RunManifest, RunStarted, get_json
from mfm_dist.api import cancel, resume, run
from mfm_dist.config import FanOutJoin
from mfm_dist.results import RunPhase
from mfm_dist.stores import InMemoryArtifactStore, InMemoryEventStore
from mfm_dist.stores.urls import Stores, open_stores
from mfm_dist.verify import verify_run
from support.engine_helpers import GraphOp


def test_run_resume_and_cancel_in_one_call_each(tmp_path: Path) -> None:
    result = run("fanout_demo", {"items": 6}, fan_out=3, labels={"team": "data"}, home=tmp_path)
    assert result.phase == RunPhase.COMPLETED
    # The same run through the building blocks' defaults gives the same final snapshot.
    plain = run("fanout_demo", {"items": 6}, config=RunConfig(), home=tmp_path)
    assert plain.final_snapshot_id == result.final_snapshot_id
    again = resume(str(result.run_id), home=tmp_path)
    assert again == result
    assert cancel(str(result.run_id), "too late", home=tmp_path).status == "finished"
    stores = open_stores(home=tmp_path, read_only=True)
    try:
        [row] = [r for r in stores.events.list_runs() if r.run_id == result.run_id]
        assert row.labels == {"team": "data"}
        report = verify_run(
            stores.events, stores.artifacts, OperationRegistry.default(), str(result.run_id)
        )
        assert report.ok, report.violations
    finally:
        stores.close()


def test_run_an_operation_object_on_given_stores() -> None:
    def double(ctx: Any, io: Any, rec: Any) -> None:
        ctx.set("doubled", ctx.get("input")["n"] * 2)

    stores = Stores(events=InMemoryEventStore(), artifacts=InMemoryArtifactStore())
    op = GraphOp("double", {"a": FnState(double)})
    result = run(op, {"n": 21}, stores=stores, config=RunConfig(), run_id=None)
    assert result.phase == RunPhase.COMPLETED
    snapshot = stores.artifacts.get(str(result.final_snapshot_id))
    assert b'"doubled":42' in snapshot
    fanned = run(op, {"n": 1}, stores=stores, fan_out=2, registry=None)
    assert fanned.phase == RunPhase.COMPLETED
    started = stores.events.read_range(fanned.run_id)[0].event
    assert isinstance(started, RunStarted)
    manifest = RunManifest.model_validate(get_json(stores.artifacts, str(started.manifest_id)))
    assert manifest.run_config.execution_mode == FanOutJoin(max_concurrency=2)
