"""Fan-out/join semantics (docs/merge.md) on the embedded engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from mfm_dist import FanOutJoin, FnState, RunConfig, RunPhase, StateMeta
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import StorageError
from mfm_dist.events import DomainEvent, RunCompleted, StateCompleted, StateEntered, StateFailed
from mfm_dist.stores import InMemoryEventStore
from mfm_dist.verify import verify_run
from support.engine_helpers import GraphOp, Harness, registry_with


def fan(n: int) -> RunConfig:
    return RunConfig(execution_mode=FanOutJoin(max_concurrency=n))


def diamond_op() -> GraphOp:
    """root → (left, right) → join, plus an independent branch x → y."""

    def root(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("seed", 7)
        ctx.set("scratch", "temporary")

    def left(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("left", ctx.get("seed") * 2)
        ctx.delete("scratch")

    def right(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("right", ctx.get("seed") * 3)

    def join(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("sum", ctx.get("left") + ctx.get("right"))

    def x(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("x", [1, 2])

    def y(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("x", [*ctx.get("x"), 3])  # overwrite its ancestor's key: ordered, so fine

    return GraphOp(
        "diamond",
        {
            k: FnState(v)
            for k, v in dict(root=root, left=left, right=right, join=join, x=x, y=y).items()
        },
        [("root", "left"), ("root", "right"), ("left", "join"), ("right", "join"), ("x", "y")],
    )


@pytest.mark.parametrize("width", [1, 2, 8])
def test_fan_out_matches_sequential(width: int) -> None:
    h = Harness(registry_with(diamond_op()))
    seq = h.run("diamond", {}, RunConfig())
    par = h.run("diamond", {}, fan(width))
    assert seq.phase == par.phase == RunPhase.COMPLETED
    assert par.final_snapshot_id == seq.final_snapshot_id
    final = SnapshotStore(h.artifacts).load(str(par.final_snapshot_id))
    assert final == {"input": {}, "seed": 7, "left": 14, "right": 21, "sum": 35, "x": [1, 2, 3]}
    assert verify_run(h.events, h.artifacts, h.registry, par.run_id).ok


def test_fanout_demo_same_final_snapshot_as_sequential() -> None:
    h = Harness(registry_with())
    seq = h.run("fanout_demo", {"items": 40}, RunConfig())
    par = h.run("fanout_demo", {"items": 40}, fan(8))
    assert par.final_snapshot_id == seq.final_snapshot_id
    summary = SnapshotStore(h.artifacts).load(str(par.final_snapshot_id))["summary"]
    assert summary["items"] == 40


def test_bases_are_ancestor_merges() -> None:
    """A state sees its ancestors' writes only, never a sibling's."""
    seen: dict[str, list[str]] = {}

    def record(name: str) -> FnState:
        def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
            seen[name] = sorted(ctx.keys())
            ctx.set(name, 1)

        return FnState(fn)

    op = GraphOp("iso", {n: record(n) for n in ("a", "b", "c", "d")}, [("a", "c"), ("b", "d")])
    h = Harness(registry_with(op))
    assert h.run("iso", {}, fan(4)).phase == RunPhase.COMPLETED
    assert seen == {"a": ["input"], "b": ["input"], "c": ["a", "input"], "d": ["b", "input"]}


def test_merge_conflict_is_detected_and_reported() -> None:
    def writer(value: int) -> FnState:
        def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
            ctx.set("shared", value)
            ctx.set(f"own_{value}", value)

        return FnState(fn)

    op = GraphOp(
        "clash",
        {"a": writer(1), "b": writer(2), "after": FnState(lambda c, i, r: None)},
        [("a", "after"), ("b", "after")],
    )
    h = Harness(registry_with(op))
    result = h.run("clash", {}, fan(2))
    assert result.phase == RunPhase.FAILED
    assert result.error is not None and result.error.code == "context_merge_conflict"
    assert result.error.details == {"keys": ["shared"], "states": ["clash.main.a", "clash.main.b"]}
    envs = h.events.read_range(result.run_id)
    # Nothing recorded is lost: both writers completed; the join never started.
    completed = {str(e.event.state_id) for e in envs if isinstance(e.event, StateCompleted)}
    assert completed == {"clash.main.a", "clash.main.b"}
    assert not any(e.state_id == "clash.main.after" for e in envs)
    conflict = [e.event for e in envs if isinstance(e.event, DomainEvent)]
    assert conflict and conflict[0].name == "context_merge_conflict"
    last = envs[-1].event
    assert isinstance(last, RunCompleted) and last.status.value == "Failed"
    final = SnapshotStore(h.artifacts).load(str(last.final_snapshot_id))
    assert final["own_1"] == 1 and final["own_2"] == 2
    # Resume is idempotent and reports the same error.
    again = h.engine().resume(result.run_id)
    assert again.phase == RunPhase.FAILED and again.error == result.error
    assert verify_run(h.events, h.artifacts, h.registry, result.run_id).ok


def test_concurrency_never_exceeds_the_bound() -> None:
    lock = threading.Lock()
    current = 0
    peak = 0

    def busy(ctx, io, rec):  # type: ignore[no-untyped-def]
        nonlocal current, peak
        with lock:
            current += 1
            peak = max(peak, current)
        time.sleep(0.01)
        with lock:
            current -= 1
        ctx.set(rec.state_id.rsplit(".", 1)[1], 1)

    op = GraphOp("busy", {f"s{i:02d}": FnState(busy) for i in range(24)})
    h = Harness(registry_with(op))
    assert h.run("busy", {}, fan(3)).phase == RunPhase.COMPLETED
    assert 1 < peak <= 3


def test_blocking_handlers_do_not_block_other_branches() -> None:
    """Synchronous handlers run on their own threads: a barrier of 4 only opens if all 4 run
    at once (with a single-threaded loop it would time out and fail the states)."""
    barrier = threading.Barrier(4, timeout=10)

    def blocking(ctx, io, rec):  # type: ignore[no-untyped-def]
        barrier.wait()  # blocks the calling thread
        ctx.set(rec.state_id.rsplit(".", 1)[1], True)

    op = GraphOp("blocking", {f"b{i}": FnState(blocking) for i in range(4)})
    h = Harness(registry_with(op))
    assert h.run("blocking", {}, fan(4)).phase == RunPhase.COMPLETED


def test_failure_blocks_only_its_descendants() -> None:
    """A failed state stops what depends on it; independent branches still complete, so the
    completed set — and the final snapshot — never depend on timing or worker count."""
    from mfm_dist import StateError

    def boom(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("boom", "fails", retryable=False)

    def slow(name: str) -> FnState:
        def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
            time.sleep(0.02)
            ctx.set(name, 1)

        return FnState(fn)

    op = GraphOp(
        "drain",
        {"bad": FnState(boom), "after_bad": slow("after_bad"), "slow": slow("slow"),
         "later": slow("later")},
        [("bad", "after_bad"), ("slow", "later")],
    )
    finals = set()
    for width in (1, 2, 4):
        h = Harness(registry_with(op))
        result = h.run("drain", {}, fan(width))
        assert result.phase == RunPhase.FAILED and result.failed_state == "drain.main.bad"
        envs = h.events.read_range(result.run_id)
        done = {str(e.event.state_id) for e in envs if isinstance(e.event, StateCompleted)}
        assert done == {"drain.main.slow", "drain.main.later"}
        assert not any(e.state_id == "drain.main.after_bad" for e in envs)
        finals.add(result.final_snapshot_id)
        assert verify_run(h.events, h.artifacts, h.registry, result.run_id).ok
    assert len(finals) == 1


def test_conflicts_are_reported_the_same_at_any_width() -> None:
    def write(key: str, value: int) -> FnState:
        return FnState(lambda c, i, r: c.set(key, value))

    op = GraphOp(
        "many",
        {"a": write("k", 1), "b": write("j", 1), "c": write("j", 2), "d": write("k", 2),
         "z": write("z", 9)},
    )
    outcomes = set()
    for width in (1, 2, 3, 5):
        h = Harness(registry_with(op))
        result = h.run("many", {}, fan(width))
        assert result.phase == RunPhase.FAILED and result.error is not None
        outcomes.add((result.final_snapshot_id, str(result.error.details)))
        again = h.engine().resume(result.run_id)
        assert again == result
    assert len(outcomes) == 1
    (_, details), = outcomes
    assert "many.main.a" in details and "many.main.d" in details


class CrashAfter(InMemoryEventStore):
    """Raises on the n-th StateCompleted append (simulated process death)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.remaining = n

    def append(self, run_id, expected_seq, envelopes):  # type: ignore[no-untyped-def]
        if any(isinstance(e.event, StateCompleted) for e in envelopes):
            self.remaining -= 1
            if self.remaining == 0:
                raise StorageError("simulated_crash", "died")
        return super().append(run_id, expected_seq, envelopes)


def test_fan_out_resume_closes_orphans_and_recomputes_bases() -> None:
    h = Harness(registry_with(), events=CrashAfter(12))
    with pytest.raises(StorageError):
        h.run("fanout_demo", {"items": 30}, fan(4))
    run_id = h.events.list_runs()[0].run_id
    envs = h.events.read_range(run_id)
    open_count = sum(isinstance(e.event, StateEntered) for e in envs) - sum(
        isinstance(e.event, (StateCompleted, StateFailed)) for e in envs
    )
    assert open_count >= 1
    result = h.engine().resume(run_id)
    assert result.phase == RunPhase.COMPLETED
    reference = Harness(registry_with()).run("fanout_demo", {"items": 30}, RunConfig())
    assert result.final_snapshot_id == reference.final_snapshot_id
    envs = h.events.read_range(run_id)
    orphans = [e for e in envs if isinstance(e.event, StateFailed)]
    assert len(orphans) == open_count
    assert all(e.event.error.code == "orphan_attempt_recovered" for e in orphans)  # type: ignore[union-attr]
    report = verify_run(h.events, h.artifacts, h.registry, run_id)
    assert report.ok, report.violations


def test_skip_tags_in_fan_out() -> None:
    calls: list[str] = []

    def effect(ctx, io, rec):  # type: ignore[no-untyped-def]
        calls.append(rec.state_id)

    op = GraphOp(
        "fdry",
        {
            "a": FnState(lambda c, i, r: c.set("a", 1)),
            "pay": FnState(effect, StateMeta(tags=["apply_side_effect"])),
        },
        [("a", "pay")],
    )
    h = Harness(registry_with(op))
    result = h.run(
        "fdry",
        {},
        RunConfig(execution_mode=FanOutJoin(max_concurrency=2), skip_tags=["apply_side_effect"]),
    )
    assert result.phase == RunPhase.COMPLETED and calls == []


def _unused(_: Any) -> None:  # keep imports honest for type checkers
    return None


def test_run_writer_group_commits_and_returns_each_callers_envelopes() -> None:
    import threading as th

    from mfm_dist.engine.local import RunWriter
    from mfm_dist.events import DomainEvent, EventDraft, EventEnvelope, RunStarted
    from mfm_dist.ids import RunId

    class Slow(InMemoryEventStore):
        calls = 0

        def append(
            self, run_id: RunId, expected_seq: int, envelopes: Sequence[EventEnvelope]
        ) -> None:
            Slow.calls += 1
            time.sleep(0.01)  # a slow fsync: lets other callers queue up
            return super().append(run_id, expected_seq, envelopes)

    store = Slow()
    run_id = RunId.mint()
    a = "a" * 64
    started = RunStarted(op_id="x", manifest_id=a, initial_snapshot_id=a)
    store.append(run_id, 0, [EventDraft(event=started, ts_millis=0).at(run_id, 1)])
    Slow.calls = 0
    writer = RunWriter(store, run_id, 1)
    results: dict[int, list[Any]] = {}

    def worker(n: int) -> None:
        drafts = [EventDraft(event=DomainEvent(name="n", payload={"n": n, "k": k}), ts_millis=0)
                  for k in range(3)]
        results[n] = writer.append(drafts)

    threads = [th.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Slow.calls < 16  # batches were combined
    for n, envs in results.items():
        assert [e.event.payload for e in envs] == [{"n": n, "k": k} for k in range(3)]
        assert [e.seq for e in envs] == list(range(envs[0].seq, envs[0].seq + 3))
    seqs = [e.seq for e in store.read_range(run_id)]
    assert seqs == list(range(1, 2 + 16 * 3))
