"""Scale without falling over: a coordinator's memory per state, bounded work per step,
and the compact structures behind them (docs/distributed.md, "Scale").

In process: a real redis-server, a local artifact directory, the real `Coordinator` and a
dispatcher that records chords (tests/support/worker_harness.py). Memory is measured with
tracemalloc; nothing here is timed."""

from __future__ import annotations

import gc
import random
import tracemalloc
from typing import Any

import pytest

from mfm_dist.canonical import JsonValue
from mfm_dist.config import FanOutJoin, RetryPolicy, RunConfig
from mfm_dist.engine import history as history_module
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.merge import Delta, MergeTracker, PackedDelta
from mfm_dist.engine.progress import RunProgress
from mfm_dist.engine.snapshots import RECENT, SnapshotStore
from mfm_dist.events import EventDraft, StateCompleted, StateEntered, StateFailed
from mfm_dist.examples import item_value
from mfm_dist.ids import ArtifactId, OpId, RunId, StateId
from mfm_dist.operations import OperationRegistry
from mfm_dist.plan import CompiledPlan, ExecutionPlan, StateGraph
from mfm_dist.state import FnState
from mfm_dist.stores.memory import InMemoryArtifactStore
from mfm_dist.verify import verify_run
from support.worker_harness import FakeDispatcher, Harness
from workers import coordinator as coordinator_module
from workers import runtime as runtime_module
from workers.coordinator import CONTINUE_SAFETY_MS, Coordinator
from workers.leases import SENT, Reservation
from workers.outcomes import AttemptOutcome, StepOutcome
from workers.runtime import Runtime


def fan(n: int) -> RunConfig:
    return RunConfig(execution_mode=FanOutJoin(max_concurrency=n))


def item_ids(h: Harness, rid: str) -> list[str]:
    """The run's item states in canonical order (every state but the join)."""
    run = h.coordinator._runs.peek(rid)
    assert run is not None
    return [str(s) for s in run.progress.plan.order[:-1]]


def final_snapshot(h: Harness, rid: str) -> str:
    last = h.log(rid)[-1].event
    return str(last.final_snapshot_id)  # type: ignore[union-attr]


# -- bounded work per step ------------------------------------------------------------------------


def test_a_wide_wave_goes_out_in_bounded_steps_and_the_rest_follows(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "STEP_DISPATCH_LIMIT", 10)
    monkeypatch.setattr(coordinator_module, "DISPATCH_SLICE", 4)
    rid = h.submit("fanout_demo", {"items": 24}, fan(100))

    assert h.coordinator.advance(rid) == StepOutcome.dispatched(10)
    assert [len(c) for c in h.dispatcher.chords] == [4, 4, 2]
    # The step let go of the lock and queued the next slice behind other runs' advances
    # (one `advance` message), with the run's timer as the backstop.
    assert h.dispatcher.advances == [rid]
    due = h.rt.coord.scheduled(rid)
    assert due is not None and due <= now_millis() + CONTINUE_SAFETY_MS
    first = h.dispatcher.take()

    assert h.coordinator.advance(rid) == StepOutcome.dispatched(10)
    assert h.dispatcher.advances == [rid, rid]
    second = h.dispatcher.take()
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(4)  # the last items; the join waits
    assert h.dispatcher.advances == [rid, rid]  # nothing left: no continuation
    third = h.dispatcher.take()
    assert h.coordinator.advance(rid) == StepOutcome.WAITING

    sent = [t.state_id for t in first + second + third]
    assert sent == item_ids(h, rid)  # canonical order, each item once
    for task in first + second + third:
        assert h.run(task) == AttemptOutcome.COMPLETED
    h.drive(rid)

    # The same run dispatched in one step ends with the same final snapshot.
    monkeypatch.setattr(coordinator_module, "STEP_DISPATCH_LIMIT", 1024)
    other = h.submit("fanout_demo", {"items": 24}, fan(100))
    assert h.coordinator.advance(other) == StepOutcome.dispatched(24)
    h.dispatcher.advances.clear()
    for task in h.dispatcher.take():
        h.run(task)
    h.drive(other)
    assert final_snapshot(h, rid) == final_snapshot(h, other)
    report = verify_run(h.rt.events, h.rt.artifacts, h.rt.registry, rid)
    assert report.ok, report.violations


def test_a_step_stops_sending_once_its_time_budget_is_spent(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "DISPATCH_SLICE", 4)
    monkeypatch.setattr(coordinator_module, "STEP_BUDGET_S", -1.0)  # spent after one chord
    rid = h.submit("fanout_demo", {"items": 9}, fan(100))
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(4)
    assert [len(c) for c in h.dispatcher.chords] == [4]
    assert h.dispatcher.advances == [rid]
    # What was not sent was not reserved either: the next step decides it again.
    assert len(h.rt.coord.reservations(rid)) == 4
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(4)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)
    sent = [t.state_id for t in h.dispatcher.take()]
    assert sent == item_ids(h, rid)


def test_chords_shrink_to_the_measured_sending_rate_so_a_step_keeps_its_budget(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a loaded machine sending slows down (2.4 ms per attempt measured in a busy control
    worker). The first chord of a process is full-sized; later ones are sized so that one
    takes about `SLICE_TARGET_S`, and no chord starts that would end past the budget."""
    now = [0.0]
    per_attempt = 2.0**-8  # 3.9 ms; dyadic, so the clock's sums are exact
    monkeypatch.setattr(coordinator_module, "clock", lambda: now[0])
    send = h.dispatcher.send_chord

    def slow_send(run_id: str, attempts: list[Any]) -> None:
        now[0] += per_attempt * len(attempts)
        send(run_id, attempts)

    monkeypatch.setattr(h.dispatcher, "send_chord", slow_send)
    rid = h.submit("fanout_demo", {"items": 599}, fan(1000))

    assert h.coordinator.advance(rid) == StepOutcome.dispatched(256)  # rate unknown yet
    assert [len(c) for c in h.dispatcher.chords] == [256]
    h.dispatcher.chords.clear()
    size = int(coordinator_module.SLICE_TARGET_S / per_attempt)  # 51
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(3 * size)
    assert [len(c) for c in h.dispatcher.chords] == [size] * 3
    assert 3 * size * per_attempt <= coordinator_module.STEP_BUDGET_S  # a 4th would pass it
    h.dispatcher.chords.clear()

    per_attempt = 2.0**-14  # the machine is quiet again: chords grow back to the cap
    steps = [h.coordinator.advance(rid) for _ in range(3)]
    assert [len(c) for c in h.dispatcher.chords][-1] == 256 or steps[-1] == StepOutcome.WAITING
    while h.coordinator.advance(rid) != StepOutcome.WAITING:
        pass
    sent = [t.state_id for t in h.dispatcher.take()]
    assert len(sent) == 599 - 256 - 3 * size and len(set(sent)) == len(sent)


def test_the_concurrency_bound_holds_across_slices(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "STEP_DISPATCH_LIMIT", 10)
    rid = h.submit("fanout_demo", {"items": 30}, fan(12))
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(10)
    assert h.dispatcher.advances == [rid]
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(2)  # 12 in flight: the bound
    assert h.dispatcher.advances == [rid]  # no free slot: nothing to continue with
    assert h.coordinator.advance(rid) == StepOutcome.WAITING
    assert len(h.dispatcher.take()) == 12


def test_a_step_asks_only_the_states_it_sends_whether_they_may_run(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wave sent a slice per step must not re-examine all of its unsent states at every
    step: at 100,000 items that was ~2 s per step, every step (the lock held meanwhile)."""
    monkeypatch.setattr(coordinator_module, "STEP_DISPATCH_LIMIT", 10)
    asked: list[int] = []
    runnable = RunProgress.runnable

    def counted(self: RunProgress, i: int) -> bool:
        asked.append(i)
        return runnable(self, i)

    monkeypatch.setattr(RunProgress, "runnable", counted)
    rid = h.submit("fanout_demo", {"items": 3000}, fan(5000))
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(10)
    assert h.dispatcher.advances == [rid]  # more to send: a continuation was queued
    first_step = len(asked)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(10)
    assert len(asked) - first_step <= 11 + 5  # the slice, one more, a few for the finish check
    sent = [t.state_id for t in h.dispatcher.take()]
    assert sent == item_ids(h, rid)[:20]  # canonical order, each once


# -- liveness at scale: no duplicate dispatches ---------------------------------------------------


def test_a_dispatch_past_its_timeout_is_kept_while_the_attempt_queue_has_a_backlog(
    h: Harness,
) -> None:
    rid = h.submit("fanout_demo", {"items": 2}, fan(10))
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(2)
    tasks = h.dispatcher.take()
    long_ago = now_millis() - 600_000
    expired = Reservation(0, long_ago + 60_000, SENT, long_ago)
    h.rt.coord.reserve(rid, {t.state_id: expired for t in tasks})

    h.dispatcher.queue_depth = 500  # a wave wider than the workers drain in the timeout
    assert h.coordinator.advance(rid) == StepOutcome.WAITING
    assert h.dispatcher.take() == []
    h.dispatcher.queue_depth = 0  # the queue drained and they never ran: messages lost
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(2)
    assert sorted(t.state_id for t in h.dispatcher.take()) == sorted(t.state_id for t in tasks)


def test_an_attempt_that_finishes_during_a_look_is_not_dispatched_again(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("fanout_demo", {"items": 2}, fan(10))
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(2)
    first, _ = h.dispatcher.take()
    assert h.coordinator.advance(rid) == StepOutcome.WAITING  # the run is cached, its log read

    read = h.rt.coord.grouped_reservations
    raced: list[AttemptOutcome] = []

    def racing(run_id: str) -> Any:
        # The attempt runs to its end (lease taken and released: its reservation is left
        # claimed) after this look read the log, before it reads the reservations.
        if not raced:
            raced.append(h.run(first))
        return read(run_id)

    monkeypatch.setattr(h.rt.coord, "grouped_reservations", racing)
    assert h.coordinator.advance(rid) == StepOutcome.WAITING
    assert raced == [AttemptOutcome.COMPLETED]
    assert h.dispatcher.take() == []


# -- memory per state -----------------------------------------------------------------------------


def write_fanout_history(h: Harness, rid: str, items: int) -> None:
    """Complete every item of a `fanout_demo` run directly in the stores (as its attempts
    would: each item's snapshot is the initial one plus its entry), batch by batch."""
    history = RunHistory.load(h.rt.events, RunId(rid))
    initial = str(history.started.initial_snapshot_id)
    base = h.rt.snapshots.load(initial)
    width = max(4, len(str(items - 1)))
    drafts: list[EventDraft] = []
    for item in range(items):
        key = f"item_{item:0{width}d}"
        sid = StateId(f"fanout_demo.main.{key}")
        content: dict[str, JsonValue] = {**base, key: {"item": item, "value": item_value(item)}}
        snapshot = h.rt.snapshots.save(content)
        drafts += [
            EventDraft(
                event=StateEntered(state_id=sid, attempt=0, base_snapshot_id=ArtifactId(initial)),
                ts_millis=1,
                state_id=sid,
                attempt=0,
            ),
            EventDraft(
                event=StateCompleted(state_id=sid, context_snapshot_id=snapshot),
                ts_millis=2,
                state_id=sid,
                attempt=0,
            ),
        ]
        if len(drafts) >= 1000:
            h.rt.events.append_next(RunId(rid), drafts)
            drafts = []
    if drafts:
        h.rt.events.append_next(RunId(rid), drafts)
    h.rt.snapshots.clear_cache()


def test_a_coordinator_holds_a_5000_state_run_in_under_5_kb_per_state(h: Harness) -> None:
    states = 5000
    rid = h.submit("fanout_demo", {"items": states - 1}, fan(states))
    write_fanout_history(h, rid, states - 1)

    rt = Runtime.from_env()  # a coordinator process that has never seen the run
    coordinator = Coordinator(rt, FakeDispatcher())
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        run = coordinator._load(rid)
        rt.snapshots.clear_cache()  # bounded separately (entries and bytes)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert run.progress.is_done() is False and len(run.progress.completed) == states - 1
        # The plan (its states' handlers and metas), the checked history and the progress
        # (packed deltas, the merge index) together:
        assert held / states < 5 * 1024, f"{held / states:.0f} bytes per state"
        # Only run-level envelopes are kept (RunStarted, run_submitted), not 10,000.
        assert len(run.history.envelopes) <= 2 and run.history.head == 2 * (states - 1) + 1
        # The join's base is the merge of every item, and the run finishes as usual.
        assert coordinator.advance(rid) == StepOutcome.dispatched(1)
    finally:
        coordinator.close()
        rt.close()


def test_the_merge_index_grows_linearly_with_completed_states() -> None:
    n = 20_000
    graph = StateGraph()
    for i in range(n):
        graph.add(f"m.s.item_{i:05d}", FnState(lambda ctx, io, rec: None))
    plan = ExecutionPlan(op_id=OpId("m"), graph=graph).compiled
    tracker = MergeTracker(plan, detect_conflicts=True)
    deltas = [Delta(writes={f"item_{i:05d}": {"item": i, "value": i * 7919}}) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, delta in enumerate(deltas):
        tracker.record(i, f"{i:064x}", delta)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # One writer per key: an index and a packed delta per state, not a bitmask as wide as
    # the plan for each key (which made this quadratic: ~1.25 KB per key at 20,000 states).
    assert held / n < 700, f"{held / n:.0f} bytes per state"
    assert tracker.pairs == set()


def test_a_key_written_by_unordered_states_is_still_a_conflict() -> None:
    graph = StateGraph()
    for name in ("a", "b", "c"):
        graph.add(f"m.s.{name}", FnState(lambda ctx, io, rec: None))
    graph.edge("m.s.a", "m.s.c")
    plan = ExecutionPlan(op_id=OpId("m"), graph=graph).compiled
    tracker = MergeTracker(plan)
    pos = plan.position
    assert tracker.record(pos["m.s.a"], "1" * 64, Delta(writes={"k": 1})) is None
    assert tracker.record(pos["m.s.c"], "2" * 64, Delta(writes={"k": 2})) is None  # ordered
    conflict = tracker.record(pos["m.s.b"], "3" * 64, Delta(writes={"k": 3}))
    assert conflict is not None and conflict.keys == ("k",)
    assert {str(conflict.first), str(conflict.second)} == {"m.s.a", "m.s.b"}
    assert tracker.first_conflict() is not None


@pytest.mark.parametrize(
    "writes",
    [
        {},
        {"a": 1, "b": "x", "c": None, "d": True, "e": [1, {"f": -(2**53 - 1)}]},
        {"deep": "leaf"},
    ],
)
def test_a_packed_delta_gives_back_exactly_what_was_recorded(writes: dict[str, Any]) -> None:
    if "deep" in writes:  # nested deeper than orjson writes: kept as it is
        value: Any = "leaf"
        for _ in range(300):
            value = [value]
        writes = {"deep": value}
    delta = Delta(writes=writes, deletes=frozenset({"gone", "also"}))
    packed = PackedDelta.pack(delta)
    assert packed.unpack() == delta
    assert packed.keys == delta.keys
    content: dict[str, JsonValue] = {"gone": 1, "kept": 2}
    expected = dict(content)
    delta.apply_to(expected)
    packed.apply_to(content)
    assert content == expected


def test_the_snapshot_cache_is_bounded_in_bytes() -> None:
    store = SnapshotStore(InMemoryArtifactStore(), cache_size=1000, cache_bytes=4000)
    ids = [store.save({"k": "x" * 90, "n": i}) for i in range(100)]
    assert store._contents.weight <= 4000 and 0 < len(store._contents) < 100
    huge = store.save({"k": "y" * 2000})  # over a quarter of the budget: only kept as recent
    assert huge not in store._contents
    for i in range(RECENT):
        store.save({"n": i})
    assert not store.is_cached(huge)
    assert store.load(huge) == {"k": "y" * 2000} and huge not in store._contents
    assert store.load(ids[0]) == {"k": "x" * 90, "n": 0}  # evicted ones load again


# -- the frontier, the compact history ------------------------------------------------------------


def random_plan(rng: random.Random, n: int) -> CompiledPlan:
    graph = StateGraph()
    for i in range(n):
        graph.add(f"m.s.n{i:03d}", FnState(lambda ctx, io, rec: None))
    for j in range(n):
        for i in range(j):
            if rng.random() < 0.08:
                graph.edge(f"m.s.n{i:03d}", f"m.s.n{j:03d}")
    return ExecutionPlan(op_id=OpId("m"), graph=graph).compiled


@pytest.mark.parametrize("seed", range(5))
def test_the_frontier_is_what_may_run_as_states_complete(seed: int) -> None:
    rng = random.Random(seed)
    plan = random_plan(rng, 60)
    store = SnapshotStore(InMemoryArtifactStore())
    initial = store.save({})
    for mode in (fan(8), RunConfig()):
        progress = RunProgress(plan, mode, store, initial)
        done: set[int] = set()
        while len(done) < len(plan):
            expected = {
                i
                for i in range(len(plan))
                if i not in done and all(p in done for p in plan.preds[i])
            }
            assert progress.frontier == expected
            first = min(i for i in range(len(plan)) if i not in done)
            assert progress.first_pending() == first
            i = rng.choice(sorted(expected))
            progress.record_completed(i, initial, Delta())
            done.add(i)
        assert progress.frontier == set() and progress.first_pending() is None


def test_a_compact_history_read_in_chunks_is_the_full_history_without_its_envelopes(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = h.submit("flaky_demo", {}, RunConfig(retry_policy=RetryPolicy(max_attempts=3)))
    h.drive(rid)
    run = RunId(rid)
    monkeypatch.setattr(history_module, "LOAD_CHUNK", 2)
    full = RunHistory.load(h.rt.events, run)
    compact = RunHistory.load(h.rt.events, run, compact=True)
    assert compact.head == full.head == len(h.log(rid))
    assert compact.last == full.envelopes[-1]
    assert compact.started_ms == full.started_ms
    assert compact.states == full.states
    assert compact.facts == full.facts and compact.completed == full.completed
    assert compact.open_attempts() == full.open_attempts()
    assert compact.envelopes == [e for e in full.envelopes if e.state_id is None]
    failures = [a for r in full.states.values() for a in r.attempts if a.outcome == "failed"]
    assert failures, "flaky_demo fails its first attempt"
    assert any(isinstance(e.event, StateFailed) for e in full.envelopes)
    assert compact.domain_events == full.domain_events


def test_open_attempts_keep_the_order_their_states_first_appeared(h: Harness) -> None:
    rid = h.submit("fanout_demo", {"items": 3}, fan(10))
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(3)
    a, b, c = h.dispatcher.take()
    run = RunId(rid)
    for task in (c, a, b):  # entered out of canonical order
        h.rt.events.append_next(
            run,
            [
                EventDraft(
                    event=StateEntered(
                        state_id=StateId(task.state_id),
                        attempt=0,
                        base_snapshot_id=ArtifactId(task.base_snapshot_id),
                    ),
                    ts_millis=1,
                    state_id=StateId(task.state_id),
                    attempt=0,
                )
            ],
        )
    history = RunHistory.load(h.rt.events, run, compact=True)
    assert [s for s, _ in history.open_attempts()] == [c.state_id, a.state_id, b.state_id]
    assert history.open_count == 3


# -- caches bounded by plan size ------------------------------------------------------------------


def test_run_contexts_are_bounded_by_their_plans_states(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module, "CONTEXT_CACHE_STATES", 30)
    first = h.submit("fanout_demo", {"items": 19}, fan(4))  # 20 states
    second = h.submit("fanout_demo", {"items": 14}, fan(4))  # 15 states
    rt = Runtime.from_env()
    try:
        ids = [
            str(RunHistory.load(rt.events, RunId(r)).started.manifest_id) for r in (first, second)
        ]
        rt.run_context(ids[0])
        rt.run_context(ids[1])
        assert rt._contexts.keys() == [ids[1]]  # 35 states > 30: the older one went
        rt.run_context(ids[0])
        assert rt._contexts.keys() == [ids[0]]
    finally:
        rt.close()


def test_cached_runs_are_bounded_by_their_plans_states(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "RUN_CACHE_STATES", 30)
    coordinator = coordinator_module.Coordinator(h.rt, h.dispatcher)  # built with the bound
    try:
        first = h.submit("fanout_demo", {"items": 19}, fan(4))
        second = h.submit("fanout_demo", {"items": 10}, fan(4))
        coordinator.advance(first)
        assert coordinator._runs.keys() == [first]
        coordinator.advance(second)
        assert coordinator._runs.keys() == [second]  # 20 + 11 states > 30
    finally:
        coordinator.close()


def test_a_plan_fingerprint_is_the_same_when_states_share_their_meta() -> None:
    """Metas are dumped once per meta object now; the fingerprint (recorded by running
    runs, compared by every worker) must not change: the reference form dumps each."""
    from mfm_dist.canonical import canonical_bytes_unchecked, sha256_hex
    from mfm_dist.engine.lifecycle import prepare_run

    registry = OperationRegistry.default()
    for op, config in (("fanout_demo", {"items": 50}), ("chain_demo", {"states": 7})):
        plan = prepare_run(registry, op, config, fan(4)).plan
        compiled = plan.compiled
        metas = {str(n.id): n.state.meta().model_dump(mode="json") for n in plan.graph.states}
        shape = {
            "op_id": str(plan.op_id),
            "states": [[str(s), metas[str(s)]] for s in compiled.order],
            "edges": sorted({(str(e.from_), str(e.to)) for e in plan.graph.edges}),
        }
        assert plan.fingerprint() == sha256_hex(canonical_bytes_unchecked(shape))


def test_an_inline_continuation_hands_a_long_run_it_has_not_loaded_to_the_control_queue(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator_module, "INLINE_LOAD_MAX_EVENTS", 5)
    rid = h.submit("fanout_demo", {"items": 4}, fan(10))
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(4)
    for task in h.dispatcher.take():
        h.run(task)
    # An attempt worker's coordinator, which never loaded the run: 9 events > 5.
    worker_dispatcher = FakeDispatcher()
    worker = Coordinator(h.rt, worker_dispatcher)
    try:
        assert worker.advance_inline(rid) == StepOutcome.HANDED_OVER
        assert worker_dispatcher.advances == [rid] and rid not in worker._runs
        assert worker_dispatcher.chords == []
        # The control worker's coordinator has it cached: it takes the step itself.
        assert h.coordinator.advance_inline(rid) == StepOutcome.dispatched(1)
    finally:
        worker.close()
    short = h.submit("fanout_demo", {"items": 1}, fan(10))
    assert h.coordinator.advance_inline(short) == StepOutcome.dispatched(1)  # a short log


def test_a_worker_that_only_coordinates_keeps_its_pool_child() -> None:
    """Its caches are bounded by size; a recycled child rebuilt a 100,000-state run from
    the log in one step of 150 s (every snapshot fetched again) in the scale benchmark."""
    from types import SimpleNamespace

    from workers.app import _control_workers_keep_their_child, only_control_queue
    from workers.settings import ClusterSettings

    settings = ClusterSettings.from_env()
    assert only_control_queue([settings.control_queue], settings)
    assert only_control_queue(settings.control_queue, settings)
    assert not only_control_queue([settings.control_queue, settings.attempt_queue], settings)
    assert not only_control_queue(None, settings)  # all queues
    for queues, expected in (([settings.control_queue], None), ([settings.attempt_queue], 1000)):
        conf = SimpleNamespace(worker_max_tasks_per_child=1000)
        _control_workers_keep_their_child(conf=conf, options={"queues": queues})
        assert conf.worker_max_tasks_per_child == expected
