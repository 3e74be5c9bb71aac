"""Runs written straight into a store: a large run's history — what a real run of
`fanout_demo` leaves (every state entered and completed, then the run) without the minutes
of executing it — or a run that has only started. Used by the dashboard's tests and by
`scripts/bench_ui.py`."""

from __future__ import annotations

import time

from mfm_dist.canonical import JsonValue
from mfm_dist.config import FanOutJoin, RunConfig
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    stored_and_validated,
)
from mfm_dist.events import EventDraft, RunCompleted, RunStatus, StateCompleted, StateEntered
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.urls import Stores

APPEND_BATCH = 2000


def start_run(
    stores: Stores,
    registry: OperationRegistry,
    op: str,
    run_input: JsonValue,
    config: RunConfig | None = None,
) -> tuple[RunId, ArtifactId, list[StateId]]:
    """A run that has only started (`RunStarted`, nothing else): its id, its initial
    snapshot and its states in canonical order."""
    prepared = prepare_run(registry, op, run_input, config or RunConfig())
    manifest_id, initial = stored_and_validated(stores.artifacts, prepared)
    rid, base = record_run_start(
        stores.events, stores.artifacts, plan=prepared.plan, manifest_id=manifest_id,
        initial_snapshot=initial,
    )  # fmt: skip
    return rid, base, [StateId(str(s)) for s in prepared.plan.canonical_order()]


def complete_states(stores: Stores, rid: RunId, base: ArtifactId, states: list[StateId]) -> None:
    """Append an attempt of each state, entered and completed (with `base` as its
    snapshot): what an executed state leaves."""
    ts = int(time.time() * 1000)
    drafts: list[EventDraft] = []
    for sid in states:
        drafts.append(EventDraft(event=StateEntered(state_id=sid, attempt=0, base_snapshot_id=base),
                                 ts_millis=ts, state_id=sid, attempt=0))  # fmt: skip
        drafts.append(EventDraft(event=StateCompleted(state_id=sid, context_snapshot_id=base),
                                 ts_millis=ts + 5, state_id=sid, attempt=0))  # fmt: skip
        ts += 1
    for k in range(0, len(drafts), APPEND_BATCH):
        stores.events.append_next(rid, drafts[k : k + APPEND_BATCH])


def write_fanout_run(stores: Stores, states: int, *, finished: bool = True) -> str:
    """A completed `fanout_demo` run of `states` states (`states - 1` items and the join);
    with `finished=False` the run is left Running with its join not entered yet. Returns
    the run id."""
    config = RunConfig(execution_mode=FanOutJoin(max_concurrency=64))
    rid, base, order = start_run(
        stores, OperationRegistry.default(), "fanout_demo", {"items": states - 1}, config
    )
    complete_states(stores, rid, base, order if finished else order[:-1])
    if finished:
        done = RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=base)
        stores.events.append_next(rid, [EventDraft(event=done, ts_millis=int(time.time() * 1000))])
    return str(rid)
