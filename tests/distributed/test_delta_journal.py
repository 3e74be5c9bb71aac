"""The delta journal (workers/delta_journal.py, docs/distributed.md#the-delta-journal): a cold
coordinator takes the deltas warm ones computed instead of reading two snapshots per
completed state, and a journal that is damaged, contradicted by the log or missing costs
reads, never a different result.

In process: a real redis-server, a local artifact directory, the real `Coordinator` and a
dispatcher that records chords (tests/support/worker_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mfm_dist.config import FanOutJoin, RunConfig
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.redis_keys import DELTAS, DELTAS_UPTO, run_key
from support.worker_harness import FakeDispatcher, Harness
from workers import delta_journal
from workers.coordinator import CachedRun, Coordinator
from workers.outcomes import StepOutcome
from workers.runtime import Runtime

ITEMS = 40


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every artifact read from the durable store, by id."""
    seen: list[str] = []
    original = FileArtifactStore.get_raw

    def counted(self: FileArtifactStore, artifact_id: Any) -> bytes:
        seen.append(str(artifact_id))
        return original(self, artifact_id)

    monkeypatch.setattr(FileArtifactStore, "get_raw", counted)
    yield seen


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta_journal, "SEGMENT_MIN", 8)
    import workers.coordinator as coordinator_module

    monkeypatch.setattr(coordinator_module, "SEGMENT_MIN", 8)


def fan(n: int) -> RunConfig:
    return RunConfig(execution_mode=FanOutJoin(max_concurrency=n))


def run_items(h: Harness, rid: str) -> list[Any]:
    """Dispatch and run every item; the next look journals them and dispatches the join
    (returned, not run)."""
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(ITEMS)
    for task in h.dispatcher.take():
        h.run(task)
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(1)  # the join
    return h.dispatcher.take()


@contextmanager
def cold(rid: str | None = None) -> Iterator[tuple[CachedRun | None, Coordinator]]:
    """A coordinator in a process that has never seen the run, and its load of `rid`."""
    rt = Runtime.from_env()
    coordinator = Coordinator(rt, FakeDispatcher())
    try:
        yield (coordinator._load(rid) if rid else None), coordinator
    finally:
        coordinator.close()
        rt.close()


def assert_recomputed(rid: str, warm: CachedRun, reads: list[str]) -> None:
    """A cold load that read every item's snapshot and still got the warm deltas."""
    reads.clear()
    with cold(rid) as (run, _):
        assert run is not None
        assert len(set(reads)) >= ITEMS
        assert deltas_of(run) == deltas_of(warm)


def deltas_of(run: CachedRun) -> dict[int, tuple[dict[str, Any], frozenset[str]]]:
    return {i: (d.writes, d.deletes) for i, d in run.progress.tracker.deltas.items()}


def test_a_cold_coordinator_takes_the_journaled_deltas_instead_of_reading_snapshots(
    h: Harness, reads: list[str]
) -> None:
    rid = h.submit("fanout_demo", {"items": ITEMS}, fan(100))
    run_items(h, rid)
    assert h.coordinator.journal.upto(rid) > 0
    assert len(h.coordinator.journal.read(rid)) == ITEMS
    warm = h.coordinator._runs.peek(rid)
    assert warm is not None

    reads.clear()
    with cold(rid) as (run, _):
        assert run is not None
        snapshots = {str(d.snapshot_id) for d in h.coordinator.journal.read(rid).values()}
        assert not snapshots & set(reads), "a journaled state's snapshot was read"
        assert len(reads) <= 3  # the manifest and the initial snapshot
        assert deltas_of(run) == deltas_of(warm)
        assert run.progress.completed == warm.progress.completed

    # Without the journal the same cold load reads every item's snapshot.
    h.rt.redis.delete(run_key(rid, DELTAS), run_key(rid, DELTAS_UPTO))
    assert_recomputed(rid, warm, reads)


def test_a_run_finishes_with_the_same_final_snapshot_from_a_journaled_cold_start(
    h: Harness,
) -> None:
    journaled = h.submit("fanout_demo", {"items": ITEMS}, fan(100))
    (join,) = run_items(h, journaled)
    h.run(join)
    # The warm coordinator is gone; a cold one finishes the run from the journal.
    with cold() as (_, coordinator):
        assert coordinator.advance(journaled) == StepOutcome.FINISHED

    other = h.submit("fanout_demo", {"items": ITEMS}, fan(100))
    with pytest.MonkeyPatch.context() as mp:
        import workers.coordinator as coordinator_module

        mp.setattr(coordinator_module, "SEGMENT_MIN", 10**9)  # never journaled
        h.drive(other)
    assert h.rt.redis.exists(run_key(other, DELTAS)) == 0
    finals = [h.log(r)[-1].event.final_snapshot_id for r in (journaled, other)]  # type: ignore[union-attr]
    assert finals[0] == finals[1]


def test_a_damaged_segment_or_an_entry_the_log_contradicts_is_not_used(
    h: Harness, reads: list[str]
) -> None:
    rid = h.submit("fanout_demo", {"items": ITEMS}, fan(100))
    run_items(h, rid)
    warm = h.coordinator._runs.peek(rid)
    assert warm is not None
    key = run_key(rid, DELTAS)
    segments = [bytes(s) for s in h.rt.redis.lrange(key, 0, -1) if isinstance(s, bytes)]
    assert segments

    # 1. Every segment damaged (its bytes no longer hash to its prefix): all recomputed.
    h.rt.redis.delete(key)
    h.rt.redis.rpush(key, *[b"0" * 64 + s[64:] for s in segments])
    assert_recomputed(rid, warm, reads)

    # 2. Entries naming other snapshots than the log does: not used.
    journal = h.coordinator.journal
    h.rt.redis.delete(key, run_key(rid, DELTAS_UPTO))
    wrong = [
        (
            delta_journal.Completion(seq, f"fanout_demo.main.item_{k:04d}", "0" * 64, "1" * 64),
            d,
        )
        for seq, (k, d) in enumerate(warm.progress.tracker.deltas.items(), start=1)
    ]
    assert journal.append(rid, 0, 10**6, wrong)
    assert_recomputed(rid, warm, reads)


def test_coordinators_taking_turns_journal_each_completion_once(h: Harness) -> None:
    rid = h.submit("fanout_demo", {"items": ITEMS}, fan(100))
    other_rt = Runtime.from_env()
    other = Coordinator(other_rt, h.dispatcher)
    try:
        assert h.coordinator.advance(rid) == StepOutcome.dispatched(ITEMS)
        tasks = h.dispatcher.take()
        for k, task in enumerate(tasks):
            h.run(task)
            if k % 10 == 9:  # the two coordinators look in turn as items complete
                (h.coordinator if k % 20 == 9 else other).advance(rid)
        h.coordinator.advance(rid)
        other.advance(rid)
    finally:
        other.close()
        other_rt.close()
    import orjson

    entries = [
        state[0]
        for segment in h.rt.redis.lrange(run_key(rid, DELTAS), 0, -1)
        for state in orjson.loads(segment[64:])["states"]
    ]
    assert len(entries) == len(set(entries)) == ITEMS


def test_a_finished_run_drops_its_journal(h: Harness) -> None:
    rid = h.submit("fanout_demo", {"items": ITEMS}, fan(100))
    (join,) = run_items(h, rid)
    assert h.rt.redis.exists(run_key(rid, DELTAS), run_key(rid, DELTAS_UPTO)) == 2
    h.run(join)
    h.drive(rid)
    assert h.rt.redis.exists(run_key(rid, DELTAS), run_key(rid, DELTAS_UPTO)) == 0
