"""A large run's history written straight into a store: what a real run of `fanout_demo`
leaves (every state entered and completed, then the run), without the minutes of executing
it. Used by the dashboard's scale test and by `scripts/bench_ui.py`."""

from __future__ import annotations

import time

from mfm_dist.config import FanOutJoin, RunConfig
from mfm_dist.engine.lifecycle import prepare_run, record_run_start, store_manifest, validate_start
from mfm_dist.events import EventDraft, RunCompleted, RunStatus, StateCompleted, StateEntered
from mfm_dist.ids import StateId
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.urls import Stores

APPEND_BATCH = 2000


def write_fanout_run(stores: Stores, states: int, *, finished: bool = True) -> str:
    """A completed `fanout_demo` run of `states` states (`states - 1` items and the join),
    2·states + 2 events; with `finished=False` the run is left Running with its join not
    entered yet. Returns the run id."""
    config = RunConfig(execution_mode=FanOutJoin(max_concurrency=64))
    registry = OperationRegistry.default()
    prepared = prepare_run(registry, "fanout_demo", {"items": states - 1}, config)
    manifest_id = store_manifest(stores.artifacts, prepared.manifest)
    initial = validate_start(
        stores.artifacts,
        plan=prepared.plan,
        run_config=prepared.run_config,
        manifest=prepared.manifest,
        manifest_id=manifest_id,
        initial_context=prepared.initial_context,
    )
    rid, base = record_run_start(
        stores.events, stores.artifacts, plan=prepared.plan, manifest_id=manifest_id,
        initial_snapshot=initial,
    )  # fmt: skip
    ts = int(time.time() * 1000)
    order = [StateId(str(s)) for s in prepared.plan.canonical_order()]
    if not finished:
        order = order[:-1]
    drafts: list[EventDraft] = []
    for sid in order:
        drafts.append(EventDraft(event=StateEntered(state_id=sid, attempt=0, base_snapshot_id=base),
                                 ts_millis=ts, state_id=sid, attempt=0))  # fmt: skip
        drafts.append(EventDraft(event=StateCompleted(state_id=sid, context_snapshot_id=base),
                                 ts_millis=ts + 5, state_id=sid, attempt=0))  # fmt: skip
        ts += 1
    if finished:
        drafts.append(
            EventDraft(
                event=RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=base), ts_millis=ts
            )
        )
    for k in range(0, len(drafts), APPEND_BATCH):
        stores.events.append_next(rid, drafts[k : k + APPEND_BATCH])
    return str(rid)
