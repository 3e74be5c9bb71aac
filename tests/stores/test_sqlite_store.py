"""SQLite event store specifics: processes, persistence, durability settings, fault mapping."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from mfm_dist.errors import (
    Corruption,
    ErrorCategory,
    ErrorInfo,
    InvalidInput,
    StorageError,
    StorageUnavailable,
)
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, OpId, RunId, StateId
from mfm_dist.io.base import fact_recorded_event
from mfm_dist.results import RunPhase, RunQuery
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.stores.sqlite import SCHEMA_VERSION, SqliteEventStore
from mfm_dist.stores.urls import open_event_store

SNAP = ArtifactId("c" * 64)
A = StateId("m.main.a")
PROCESSES = 4
PER_PROCESS = 12
BARRIER_WAIT_S = 120.0  # a safety net against a crashed sibling, not a timing assertion


def started(ts: int = 1_000) -> EventDraft:
    event = RunStarted(op_id=OpId("demo"), manifest_id=SNAP, initial_snapshot_id=SNAP)
    return EventDraft(event=event, ts_millis=ts)


def note(n: int, state: StateId | None = None, attempt: int | None = None) -> EventDraft:
    return EventDraft(
        event=DomainEvent(name="note", payload={"n": n}),
        ts_millis=2_000,
        state_id=state,
        attempt=attempt,
    )


def entered(state: StateId, attempt: int) -> EventDraft:
    event = StateEntered(state_id=state, attempt=attempt, base_snapshot_id=SNAP)
    return EventDraft(event=event, ts_millis=2_000, state_id=state, attempt=attempt)


def closed(state: StateId, attempt: int, *, ok: bool) -> EventDraft:
    event: StateCompleted | StateFailed
    if ok:
        event = StateCompleted(state_id=state, context_snapshot_id=SNAP)
    else:
        error = ErrorInfo(code="boom", category=ErrorCategory.UNKNOWN, message="boom")
        event = StateFailed(state_id=state, error=error)
    return EventDraft(event=event, ts_millis=2_500, state_id=state, attempt=attempt)


def fact(key: str, payload_id: ArtifactId, state: StateId, attempt: int) -> EventDraft:
    event = fact_recorded_event(key, payload_id)
    return EventDraft(event=event, ts_millis=2_600, state_id=state, attempt=attempt)


def done() -> EventDraft:
    return EventDraft(event=RunCompleted(status=RunStatus.COMPLETED), ts_millis=3_000)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "events.sqlite3"


# --- processes --------------------------------------------------------------------------------


def _append_from_process(path: str, run: str, worker: int, barrier: Barrier) -> None:
    store = SqliteEventStore(Path(path))
    barrier.wait(BARRIER_WAIT_S)
    for k in range(PER_PROCESS):
        [env] = store.append_next(RunId(run), [note(worker * 1000 + k)])
        assert env.seq >= 2
    store.close()


def test_append_next_from_several_processes_is_contiguous(db: Path) -> None:
    store = SqliteEventStore(db)
    run = RunId.mint()
    store.append_next(run, [started()])
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    procs = [
        ctx.Process(target=_append_from_process, args=(str(db), str(run), w, barrier))
        for w in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert [p.exitcode for p in procs] == [0] * PROCESSES

    events = store.read_range(run)
    total = 1 + PROCESSES * PER_PROCESS
    assert [e.seq for e in events] == list(range(1, total + 1))
    payloads = [e.event.payload["n"] for e in events[1:] if isinstance(e.event, DomainEvent)]
    assert sorted(payloads) == sorted(w * 1000 + k for w in range(PROCESSES)
                                      for k in range(PER_PROCESS))
    for w in range(PROCESSES):  # each writer's events keep their order
        mine = [n for n in payloads if n // 1000 == w]
        assert mine == sorted(mine)
    assert store.list_runs()[0].head_seq == total
    store.close()


def test_store_object_survives_fork(db: Path) -> None:
    store = SqliteEventStore(db)
    run = RunId.mint()
    store.append_next(run, [started()])

    ctx = mp.get_context("fork")
    child = ctx.Process(target=store.append_next, args=(run, [note(1)]))
    child.start()
    child.join()
    assert child.exitcode == 0
    store.append_next(run, [note(2)])  # the parent's connection is untouched
    assert [e.seq for e in store.read_range(run)] == [1, 2, 3]
    store.close()


def test_two_handles_share_guard_state(db: Path) -> None:
    one, two = SqliteEventStore(db), SqliteEventStore(db)
    run = RunId.mint()
    one.append_next(run, [started(), entered(A, 0)])
    with pytest.raises(GuardViolation) as caught:
        two.append_next(run, [entered(A, 0)])
    assert caught.value.rule == "attempt_already_open"
    assert two.head_seq(run) == 2
    one.close()
    two.close()


# --- persistence and settings -----------------------------------------------------------------


def test_reopen_persists_events_runs_and_guards(db: Path) -> None:
    store = SqliteEventStore(db)
    run = RunId.mint()
    written = store.append_next(run, [started(ts=4_242), entered(A, 0), note(1, A, 0)])
    store.close()

    reopened = SqliteEventStore(db)
    assert reopened.head_seq(run) == 3
    assert reopened.read_range(run) == written
    [summary] = reopened.list_runs()
    assert (summary.run_id, summary.started_ms, summary.phase) == (run, 4_242, RunPhase.RUNNING)
    with pytest.raises(GuardViolation) as caught:  # attempt 0 of A is still open
        reopened.append_next(run, [done()])
    assert caught.value.rule == "run_completed_with_open_attempt"
    reopened.close()


def _downgrade_to_v1(path: Path) -> None:
    """Reshape a file into the version-1 schema: no completion flags, no facts table."""
    with sqlite3.connect(path) as raw:
        raw.execute("ALTER TABLE attempts DROP COLUMN completed")
        raw.execute("DROP TABLE facts")
        raw.execute("PRAGMA user_version = 0")
    raw.close()


def test_version_1_file_is_migrated_from_its_events(db: Path) -> None:
    B = StateId("m.main.b")
    C = StateId("m.main.c")
    other = ArtifactId("d" * 64)
    store = SqliteEventStore(db)
    run, second = RunId.mint(), RunId.mint()
    store.append_next(run, [started(), entered(A, 0), fact("k", SNAP, A, 0)])
    store.append_next(run, [closed(A, 0, ok=False), entered(A, 1), closed(A, 1, ok=True)])
    store.append_next(run, [entered(B, 0), closed(B, 0, ok=False), entered(C, 0)])
    store.append_next(second, [started(), entered(A, 0), fact("k", other, A, 0)])
    store.append_next(second, [closed(A, 0, ok=True)])
    store.close()
    _downgrade_to_v1(db)

    migrated = SqliteEventStore(db)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in raw.execute("PRAGMA table_info(attempts)")}
        completed = raw.execute(
            "SELECT run_id, state_id FROM attempts WHERE completed = 1 ORDER BY run_id, state_id"
        ).fetchall()
    raw.close()
    assert "completed" in columns
    assert sorted(completed) == sorted([(str(run), str(A)), (str(second), str(A))])
    # Bindings and completions recorded before the upgrade are guarded after it.
    assert migrated.fact_binding(run, "k") == SNAP
    assert migrated.fact_binding(second, "k") == other
    with pytest.raises(GuardViolation) as caught:
        migrated.append_next(run, [entered(A, 2)])
    assert caught.value.rule == "state_already_completed"
    with pytest.raises(GuardViolation) as caught:
        migrated.append_next(run, [entered(C, 1), fact("k", other, C, 1)])
    assert caught.value.rule == "attempt_already_open"
    with pytest.raises(GuardViolation) as caught:
        migrated.append_next(run, [fact("k", other, C, 0)])
    assert caught.value.rule == "fact_conflict"
    # A failed state may still retry, and new completions are recorded as before.
    migrated.append_next(run, [closed(C, 0, ok=True), entered(B, 1), closed(B, 1, ok=True)])
    with pytest.raises(GuardViolation) as caught:
        migrated.append_next(run, [entered(B, 2)])
    assert caught.value.rule == "state_already_completed"
    migrated.close()

    # The upgraded file opens as an ordinary file of the current version.
    again = SqliteEventStore(db)
    assert again.fact_binding(run, "k") == SNAP
    assert again.head_seq(run) == 12
    again.close()


def submitted(labels: dict[str, str]) -> EventDraft:
    payload = {"fingerprint": "f" * 64, "idempotency_key": None, "labels": labels,
               "on_complete": None, "submitted_ms": 1_000}  # fmt: skip
    return EventDraft(event=DomainEvent(name="run_submitted", payload=payload), ts_millis=1_000)


def _downgrade_to_v2(path: Path) -> None:
    """Reshape a file into the version-2 schema: no end times, labels or listing indexes."""
    with sqlite3.connect(path) as raw:
        raw.execute("DROP INDEX runs_by_op")
        raw.execute("DROP INDEX runs_by_phase")
        raw.execute("DROP TABLE run_labels")
        raw.execute("ALTER TABLE runs DROP COLUMN ended_ms")
        raw.execute("PRAGMA user_version = 2")
    raw.close()


def test_version_2_file_lists_read_only_and_is_migrated_from_its_events(db: Path) -> None:
    store = SqliteEventStore(db)
    jan, feb, plain = RunId.mint(), RunId.mint(), RunId.mint()
    store.append_next(jan, [started(ts=1_000), submitted({"backfill": "jan", "part": "01"})])
    store.append_next(jan, [done()])
    store.append_next(feb, [started(ts=2_000), submitted({"backfill": "feb"})])
    store.append_next(plain, [started(ts=3_000)])
    store.append_next(plain, [done()])
    expected = store.list_runs()
    assert [r.run_id for r in expected] == [plain, feb, jan]
    assert expected[2].labels == {"backfill": "jan", "part": "01"} and expected[2].ended_ms == 3_000
    store.close()
    _downgrade_to_v2(db)

    def ids(store: SqliteEventStore, **query: object) -> list[RunId]:
        return [r.run_id for r in store.list_runs(query=RunQuery.model_validate(query))]

    # A read-only reader (the CLI's read commands) changes nothing and still answers.
    reader = SqliteEventStore(db, read_only=True)
    assert reader.list_runs() == expected
    assert ids(reader, labels={"backfill": "jan"}) == [jan]
    assert ids(reader, phase=RunPhase.COMPLETED, since_ms=2_000) == [plain]
    assert reader.list_runs(limit=1, query=RunQuery(labels={"backfill": "feb"}))[0].run_id == feb
    assert reader.runs_with_prefix(str(feb)[:8]) == [feb]
    reader.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
    raw.close()

    migrated = SqliteEventStore(db)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        labels = raw.execute("SELECT run_id, key, value FROM run_labels ORDER BY 1, 2").fetchall()
        ended = dict(raw.execute("SELECT run_id, ended_ms FROM runs").fetchall())
        plan = raw.execute(
            "EXPLAIN QUERY PLAN SELECT run_id FROM runs WHERE run_id IN"
            " (SELECT run_id FROM run_labels WHERE key = 'backfill' AND value = 'jan')"
        ).fetchall()
    raw.close()
    assert sorted(labels) == sorted(
        [(str(jan), "backfill", "jan"), (str(jan), "part", "01"), (str(feb), "backfill", "feb")]
    )
    assert ended == {str(jan): 3_000, str(feb): None, str(plain): 3_000}
    assert any("run_labels_by_value" in str(row[-1]) for row in plan)
    assert migrated.list_runs() == expected
    assert ids(migrated, labels={"backfill": "feb"}, phase=RunPhase.RUNNING) == [feb]
    migrated.append_next(feb, [done()])
    assert ids(migrated, phase=RunPhase.COMPLETED, labels={"backfill": "feb"}) == [feb]
    migrated.close()


def test_schema_stores_canonical_envelope_bytes(db: Path) -> None:
    store = SqliteEventStore(db)
    run = RunId.mint()
    [env] = store.append_next(run, [started()])
    store.close()
    with sqlite3.connect(db) as raw:
        rows = raw.execute("SELECT run_id, seq, body FROM events").fetchall()
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    raw.close()
    assert rows == [(str(run), 1, env.to_bytes())]
    assert mode == "wal"


def test_url_round_trips_through_open_event_store(db: Path) -> None:
    store = SqliteEventStore(db)
    assert db.parent.is_dir()
    assert store.url == f"sqlite://{db.absolute()}"
    assert store.url.startswith("sqlite:///")
    run = RunId.mint()
    store.append_next(run, [started()])
    again = open_event_store(store.url)
    assert isinstance(again, SqliteEventStore)
    assert again.head_seq(run) == 1
    again.close()
    store.close()


def test_synchronous_is_full_by_default_and_normal_on_request(tmp_path: Path) -> None:
    full = SqliteEventStore(tmp_path / "full.sqlite3")
    normal = SqliteEventStore(tmp_path / "normal.sqlite3", synchronous="NORMAL")
    assert full.synchronous == "FULL"
    assert normal.synchronous == "NORMAL"
    full.close()
    normal.close()
    with pytest.raises(InvalidInput) as caught:
        SqliteEventStore(tmp_path / "x.sqlite3", synchronous="OFF")  # type: ignore[arg-type]
    assert caught.value.code == "sqlite_synchronous_invalid"


# --- faults -----------------------------------------------------------------------------------


def test_not_a_database_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not a sqlite database file at all" * 100)
    with pytest.raises(Corruption) as caught:
        SqliteEventStore(path)
    assert caught.value.code == "sqlite_corrupt"


def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        SqliteEventStore(tmp_path)  # a directory
    assert caught.value.code == "sqlite_open_failed"


def test_busy_database_is_retryable_unavailable(db: Path) -> None:
    store = SqliteEventStore(db, busy_timeout_s=0.05)
    run = RunId.mint()
    store.append_next(run, [started()])
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageUnavailable) as caught:
            store.append_next(run, [note(1)])
        assert caught.value.code == "sqlite_busy"
        assert caught.value.retryable
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.append_next(run, [note(2)])
    assert store.head_seq(run) == 2
    store.close()


def test_fault_mid_batch_writes_nothing(db: Path) -> None:
    store = SqliteEventStore(db)
    run = RunId.mint()
    store.append_next(run, [started()])
    with sqlite3.connect(db) as raw:
        raw.execute(
            "CREATE TRIGGER fail_third BEFORE INSERT ON events WHEN NEW.seq = 4"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    raw.close()
    with pytest.raises(StorageError) as caught:
        store.append_next(run, [entered(A, 0), note(1, A, 0), note(2, A, 0)])
    assert caught.value.code == "sqlite_integrity_error"
    assert store.head_seq(run) == 1
    assert store.list_runs()[0].head_seq == 1
    # Guard state rolled back with the events: attempt 0 of A can still be entered.
    assert [e.seq for e in store.append_next(run, [entered(A, 0)])] == [2]
    store.close()


def test_undecodable_row_is_corruption(db: Path) -> None:
    store = SqliteEventStore(db)
    run = RunId.mint()
    store.append_next(run, [started(), note(1)])
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE events SET body = ? WHERE seq = 2", (b"{not json",))
    raw.close()
    with pytest.raises(Corruption) as caught:
        store.read_range(run)
    assert caught.value.code == "event_decode_failed"
    assert caught.value.info.details == {"run_id": str(run), "seq": 2}
    store.close()
