"""The embedded event store: one SQLite file, safe for threads and processes (docs/storage.md).

Durability: the database runs in WAL mode with `synchronous=FULL` by default, so
an `append` that returned survives a power loss — the run history is the audit
record and the resume point, and losing an acknowledged checkpoint would make a
resume redo side effects. `synchronous="NORMAL"` is offered for throughput: it
stays consistent (never corrupt, never half a batch) but the last few commits
may roll back on power loss (not on a process crash).

Concurrency: one connection per store object, guarded by a lock (threads), and
`BEGIN IMMEDIATE` per write with a busy timeout (processes), so the head read,
the envelope guards and the insert happen in one serialized transaction. The
guard state (started/completed per run, open and next attempt per state) lives
in tables next to the events, so checking a batch costs O(batch), not O(history):
`runs` (started/completed), `attempts` (open and next attempt, and whether the
state has completed) and `facts` (single-assignment fact bindings).
A store object used after `fork()` reopens its connection in the child.

Schema versions (`PRAGMA user_version`): 2 added `attempts.completed` and the
`facts` table. Opening a version-1 file adds the column and rebuilds both from
the stored events, once, inside the schema transaction. 3 added the listing
columns and indexes: `runs.ended_ms` (the time of `RunCompleted`), the side table
`run_labels` (a run's submission labels, indexed by `(key, value)`) and the
indexes `runs_by_op` and `runs_by_phase` (each ordered by start time, like
`runs_by_start`), so `list_runs` filters by op, phase, labels and start window
without reading events; and `runs.cancel_requested` (the cancel guard; no earlier
version wrote a cancel request, so it starts at 0). Opening a version-2 file adds them
and fills the listing from each run's `run_submitted` (seq 2) and last event: two
primary-key reads per run.

Run listings: `list_runs(limit, query)` is one SQL query over `runs` (driven by the
index that fits the filter) with the labels of the returned rows in one more;
`runs_with_prefix` is a range on the `runs` primary key.

Read-only mode (`read_only=True`, what the CLI's read commands use): the file is
opened with `mode=ro` and nothing is ever created — no directory, no database, no
schema or upgrade; a missing file reads as an empty store. A WAL database in a
directory the reader cannot write (an archived, read-only home) cannot get its
`-shm` index, so it is then opened as `immutable` — which is exact only while no
`-wal` file holds changes: if one does, the open fails with `sqlite_open_failed`
rather than showing a stale history. Appends raise `store_read_only`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

from pydantic import ValidationError

from mfm_dist.errors import Corruption, InvalidInput, StorageError, StorageUnavailable
from mfm_dist.events import (
    FACT_RECORDED,
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.journal import (
    JournalDraft,
    JournalEntry,
    JournalSummary,
    check_drafts,
    check_journal_id,
    check_namespace,
)
from mfm_dist.results import RunPhase, RunQuery, RunSummary
from mfm_dist.stores.base import (
    SUBMISSION_SEQ,
    EventStore,
    check_positions,
    prefix_upper_bound,
    stale_head,
    stale_journal,
    submission_labels,
    summary_changes,
)
from mfm_dist.stores.guards import GuardChanges, check_batch, fact_binding_of

Synchronous = Literal["FULL", "NORMAL"]
DEFAULT_BUSY_TIMEOUT_S = 30.0
T = TypeVar("T")
SCHEMA_VERSION = 3
LISTING_VERSION = 3  # the version that added ended_ms, run_labels and the listing indexes
_SQL_CHUNK = 500  # bound parameters per IN (...) list
_FORK_ORPHANS: list[sqlite3.Connection] = []
# A read-only open failing with one of these may succeed as `immutable` (it needs no -shm).
_NEEDS_IMMUTABLE = ("SQLITE_READONLY", "SQLITE_CANTOPEN")  # and SQLITE_READONLY_* variants

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        op_id TEXT NOT NULL DEFAULT '',
        started_ms INTEGER NOT NULL DEFAULT 0,
        phase TEXT NOT NULL DEFAULT 'Running',
        head_seq INTEGER NOT NULL DEFAULT 0,
        started INTEGER NOT NULL DEFAULT 0,
        completed INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        ended_ms INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_ms DESC, run_id DESC)",
    "CREATE INDEX IF NOT EXISTS runs_by_op ON runs (op_id, started_ms DESC, run_id DESC)",
    "CREATE INDEX IF NOT EXISTS runs_by_phase ON runs (phase, started_ms DESC, run_id DESC)",
    """CREATE TABLE IF NOT EXISTS run_labels (
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS run_labels_by_value ON run_labels (key, value, run_id)",
    """CREATE TABLE IF NOT EXISTS attempts (
        run_id TEXT NOT NULL,
        state_id TEXT NOT NULL,
        open_attempt INTEGER,
        next_attempt INTEGER NOT NULL DEFAULT 0,
        completed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, state_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS facts (
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        payload_id TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    ) WITHOUT ROWID""",
    # Journals (mfm_dist.journal): created on open like every table here; they need no
    # data migration, so older files simply gain them (and read as empty until written).
    """CREATE TABLE IF NOT EXISTS journal_entries (
        journal TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (journal, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS journals (
        journal TEXT PRIMARY KEY,
        head_seq INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    )""",
)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an older file to `SCHEMA_VERSION` (caller holds the schema transaction)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    if version < 2:
        columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(attempts)")}
        if "completed" not in columns:
            conn.execute("ALTER TABLE attempts ADD COLUMN completed INTEGER NOT NULL DEFAULT 0")
        _rebuild_completions_and_facts(conn)
    if version < LISTING_VERSION:
        columns = {str(row[1]) for row in conn.execute("PRAGMA table_info(runs)")}
        if "ended_ms" not in columns:
            conn.execute("ALTER TABLE runs ADD COLUMN ended_ms INTEGER")
        if "cancel_requested" not in columns:
            conn.execute("ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
        _fill_listing(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _envelope_or_none(body: bytes) -> EventEnvelope | None:
    try:
        return EventEnvelope.from_bytes(body)
    except (ValueError, ValidationError):
        return None  # read_range reports undecodable rows; nothing to derive from them


def _fill_listing(conn: sqlite3.Connection) -> None:
    """Derive the version-3 listing data of every run from its stored events (at upgrade):
    labels from `run_submitted` (seq 2), `ended_ms` from `RunCompleted` (the last event)."""
    labelled = conn.execute(
        "SELECT r.run_id, e.body FROM runs r JOIN events e ON e.run_id = r.run_id AND e.seq = ?",
        (SUBMISSION_SEQ,),
    ).fetchall()
    rows: list[tuple[str, str, str]] = []
    for run_id, body in labelled:
        env = _envelope_or_none(body)
        labels = submission_labels(env) if env is not None else None
        rows.extend((run_id, key, value) for key, value in (labels or {}).items())
    conn.execute("DELETE FROM run_labels")
    conn.executemany("INSERT INTO run_labels (run_id, key, value) VALUES (?, ?, ?)", rows)
    ended = conn.execute(
        "SELECT r.run_id, e.body FROM runs r JOIN events e"
        " ON e.run_id = r.run_id AND e.seq = r.head_seq WHERE r.completed = 1"
    ).fetchall()
    updates = []
    for run_id, body in ended:
        env = _envelope_or_none(body)
        if env is not None and isinstance(env.event, RunCompleted):
            updates.append((env.ts_millis, run_id))
    conn.executemany("UPDATE runs SET ended_ms = ? WHERE run_id = ?", updates)


def _rebuild_completions_and_facts(conn: sqlite3.Connection) -> None:
    """Derive the version-2 guard state from the stored events (one pass, at upgrade)."""
    done: set[tuple[str, str]] = set()
    facts: dict[tuple[str, str], str] = {}
    for run_id, body in conn.execute("SELECT run_id, body FROM events ORDER BY run_id, seq"):
        try:
            ev = EventEnvelope.from_bytes(body).event
        except (ValueError, ValidationError):
            continue  # read_range reports undecodable rows; nothing to derive from them
        if isinstance(ev, StateCompleted):
            done.add((run_id, str(ev.state_id)))
        elif isinstance(ev, (StateEntered, StateFailed)):
            done.discard((run_id, str(ev.state_id)))
        elif isinstance(ev, DomainEvent) and ev.name == FACT_RECORDED:
            binding = fact_binding_of(ev)
            if binding is not None:
                facts.setdefault((run_id, binding[0]), binding[1])
    conn.executemany(
        "UPDATE attempts SET completed = 1 WHERE run_id = ? AND state_id = ?", sorted(done)
    )
    conn.executemany(
        "INSERT OR IGNORE INTO facts (run_id, key, payload_id) VALUES (?, ?, ?)",
        [(rid, key, pid) for (rid, key), pid in sorted(facts.items())],
    )


def _storage_error(exc: sqlite3.Error, action: str) -> StorageError:
    """Map a sqlite fault to a stable code; messages never carry event payloads."""
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    details = {"action": action, "sqlite_error": name}
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(exc):
        return StorageUnavailable(f"sqlite database busy during {action}", code="sqlite_busy")
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "not a database" in str(exc):
        return Corruption(
            "sqlite_corrupt", f"sqlite database is corrupt ({action})", details=details
        )
    if name in ("SQLITE_CANTOPEN",) or "unable to open" in str(exc):
        return StorageError(
            "sqlite_open_failed", f"cannot open sqlite database ({action})", details=details
        )
    if name.startswith("SQLITE_FULL"):
        return StorageError("sqlite_disk_full", f"disk full during {action}", details=details)
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageError(
            "sqlite_integrity_error", f"constraint failed during {action}", details=details
        )
    return StorageError("sqlite_error", f"sqlite error during {action}: {name}", details=details)


class _SqlGuardView:
    """`GuardView` answered by indexed queries inside the append transaction."""

    def __init__(self, conn: sqlite3.Connection, run_id: str) -> None:
        self._conn = conn
        self._run_id = run_id
        row = conn.execute(
            "SELECT started, completed, cancel_requested FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        self._started = bool(row and row[0])
        self._completed = bool(row and row[1])
        self._cancel_requested = bool(row and row[2])

    def started(self) -> bool:
        return self._started

    def completed(self) -> bool:
        return self._completed

    def _attempt_row(self, state_id: str) -> tuple[int | None, int, bool] | None:
        row = self._conn.execute(
            "SELECT open_attempt, next_attempt, completed FROM attempts"
            " WHERE run_id = ? AND state_id = ?",
            (self._run_id, state_id),
        ).fetchone()
        return None if row is None else (row[0], int(row[1]), bool(row[2]))

    def open_attempt(self, state_id: str) -> int | None:
        row = self._attempt_row(state_id)
        return None if row is None or row[0] is None else int(row[0])

    def next_attempt(self, state_id: str) -> int:
        row = self._attempt_row(state_id)
        return 0 if row is None else row[1]

    def open_count(self) -> int:
        row = self._conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ? AND open_attempt IS NOT NULL",
            (self._run_id,),
        ).fetchone()
        return int(row[0])

    def state_completed(self, state_id: str) -> bool:
        row = self._attempt_row(state_id)
        return row is not None and row[2]

    def fact_binding(self, key: str) -> str | None:
        return _fact_binding(self._conn, self._run_id, key)

    def cancel_requested(self) -> bool:
        return self._cancel_requested


def _fact_binding(conn: sqlite3.Connection, run_id: str, key: str) -> str | None:
    row = conn.execute(
        "SELECT payload_id FROM facts WHERE run_id = ? AND key = ?", (run_id, key)
    ).fetchone()
    return None if row is None else str(row[0])


class SqliteEventStore(EventStore):
    """Per-run event streams in one SQLite file (`sqlite:///path`)."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        read_only: bool = False,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise InvalidInput("sqlite_synchronous_invalid", "synchronous must be FULL or NORMAL")
        self.path = Path(path).absolute()
        self.url = f"sqlite://{self.path.as_posix()}"
        self.read_only = read_only
        self._synchronous: Synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._absent = False  # read-only, no store in the file yet: an empty stand-in
        self._legacy = False  # read-only on a version-1 file: no `facts` table
        self._no_journals = False  # read-only on a file written before journals existed
        self._legacy_listing = False  # read-only on a file older than LISTING_VERSION
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                raise StorageError(
                    "sqlite_open_failed", "cannot create the event store directory"
                ) from None
        with self._lock:
            self._connection()

    # --- connection management -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open connection (caller holds the lock); reopened after close or fork, and
        (read-only) once a file that was missing appears."""
        if self._conn is not None and self._pid == os.getpid():
            if not (self._absent and self.path.exists()):
                return self._conn
            self._conn.close()
            self._conn = None
        if self._conn is not None:
            # Inherited across fork: never use or close it here (closing could disturb the
            # parent's locks and WAL); keep it referenced so it is never finalized either.
            _FORK_ORPHANS.append(self._conn)
        self._conn = None
        self._pid = os.getpid()
        conn = self._open_read_only() if self.read_only else self._open_writable()
        self._conn = conn
        return conn

    def _open_writable(self) -> sqlite3.Connection:
        """Open (creating if needed) in WAL mode, with the schema brought up to date."""
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _storage_error(exc, "open") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError("sqlite_wal_unavailable", "sqlite refused WAL journal mode")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                _migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            conn.close()
            raise _storage_error(exc, "open") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_read_only(self) -> sqlite3.Connection:
        """Open without creating or changing anything (see the module docstring)."""
        self._absent = not self.path.exists()
        if self._absent:
            return _empty_database()
        try:
            conn = self._connect_read_only(immutable=False)
        except sqlite3.Error as exc:
            if not str(getattr(exc, "sqlite_errorname", "")).startswith(_NEEDS_IMMUTABLE):
                raise _storage_error(exc, "open") from None
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise StorageError(
                    "sqlite_open_failed",
                    f"cannot read {self.url} read-only: its write-ahead log holds changes and "
                    "its directory is not writable (open it once with write access, or copy "
                    "the database with its -wal file to a writable directory)",
                    details={"action": "open", "sqlite_error": exc.sqlite_errorname},
                ) from None
            try:
                conn = self._connect_read_only(immutable=True)
            except sqlite3.Error as again:
                raise _storage_error(again, "open") from None
        try:
            tables = {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master")}
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            conn.close()
            raise _storage_error(exc, "open") from None
        if "events" not in tables or "runs" not in tables:
            conn.close()  # not initialised yet (or not ours): nothing recorded in it so far
            self._absent = True
            return _empty_database()
        self._legacy = version < 2 or "facts" not in tables
        self._legacy_listing = version < LISTING_VERSION or "run_labels" not in tables
        self._no_journals = "journals" not in tables or "journal_entries" not in tables
        return conn

    def _connect_read_only(self, *, immutable: bool) -> sqlite3.Connection:
        uri = f"file:{quote(self.path.as_posix())}?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # fails here if at all
        except BaseException:
            conn.close()
            raise
        return conn

    def _read(self, action: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise _storage_error(exc, action) from None

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One serialized write transaction: committed on success, rolled back on any error."""
        if self.read_only:
            raise StorageError(
                "store_read_only",
                f"the event store {self.url} was opened read-only; cannot {action}",
                details={"action": action},
            )
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _storage_error(exc, action) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # A failed COMMIT may already have rolled back.
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _storage_error(exc, action) from None
                raise

    @property
    def missing(self) -> bool:
        """True when the store is read-only and its file does not exist (it reads as empty)."""
        return self.read_only and not self.path.exists()

    @property
    def synchronous(self) -> str:
        """The `PRAGMA synchronous` level in force (`FULL` or `NORMAL`)."""
        level = self._read("pragma", lambda c: int(c.execute("PRAGMA synchronous").fetchone()[0]))
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                if self._pid == os.getpid():
                    self._conn.close()
                else:
                    _FORK_ORPHANS.append(self._conn)
            self._conn = None

    # --- EventStore ------------------------------------------------------------------------

    @staticmethod
    def _head(conn: sqlite3.Connection, run_id: str) -> int:
        row = conn.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def head_seq(self, run_id: RunId) -> int:
        return self._read("head_seq", lambda c: self._head(c, str(run_id)))

    def append(self, run_id: RunId, expected_seq: int, envelopes: Sequence[EventEnvelope]) -> None:
        batch = list(envelopes)
        with self._write("append") as conn:
            head = self._head(conn, str(run_id))
            if head != expected_seq:
                raise stale_head(run_id, expected_seq, head)
            self._commit(conn, run_id, head, batch)

    def append_next(self, run_id: RunId, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
        items = list(drafts)
        with self._write("append_next") as conn:
            head = self._head(conn, str(run_id))
            envelopes = [d.at(run_id, head + i) for i, d in enumerate(items, start=1)]
            self._commit(conn, run_id, head, envelopes)
            return envelopes

    def _commit(
        self, conn: sqlite3.Connection, run_id: RunId, head: int, envelopes: list[EventEnvelope]
    ) -> None:
        """Check and write one batch inside the caller's transaction."""
        if not envelopes:
            return
        rid = str(run_id)
        check_positions(run_id, head, envelopes)
        changes = check_batch(_SqlGuardView(conn, rid), envelopes)
        conn.executemany(
            "INSERT INTO events (run_id, seq, body) VALUES (?, ?, ?)",
            [(rid, env.seq, env.to_bytes()) for env in envelopes],
        )
        conn.execute("INSERT OR IGNORE INTO runs (run_id) VALUES (?)", (rid,))
        self._apply_changes(conn, rid, changes)
        self._update_summary(conn, rid, envelopes)

    @staticmethod
    def _apply_changes(conn: sqlite3.Connection, rid: str, changes: GuardChanges) -> None:
        if changes.started:
            conn.execute("UPDATE runs SET started = 1 WHERE run_id = ?", (rid,))
        if changes.completed:
            conn.execute("UPDATE runs SET completed = 1 WHERE run_id = ?", (rid,))
        if changes.cancel_requested:
            conn.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (rid,))
        states = set(changes.open_after) | set(changes.next_after) | changes.completed_states
        for state in sorted(states):
            conn.execute(
                "INSERT OR IGNORE INTO attempts (run_id, state_id) VALUES (?, ?)", (rid, state)
            )
            if state in changes.open_after:
                conn.execute(
                    "UPDATE attempts SET open_attempt = ? WHERE run_id = ? AND state_id = ?",
                    (changes.open_after[state], rid, state),
                )
            if state in changes.next_after:
                conn.execute(
                    "UPDATE attempts SET next_attempt = ? WHERE run_id = ? AND state_id = ?",
                    (changes.next_after[state], rid, state),
                )
            if state in changes.completed_states:
                conn.execute(
                    "UPDATE attempts SET completed = 1 WHERE run_id = ? AND state_id = ?",
                    (rid, state),
                )
        conn.executemany(
            "INSERT INTO facts (run_id, key, payload_id) VALUES (?, ?, ?)",
            [(rid, key, payload_id) for key, payload_id in sorted(changes.facts.items())],
        )

    @staticmethod
    def _update_summary(conn: sqlite3.Connection, rid: str, envelopes: list[EventEnvelope]) -> None:
        changes = summary_changes(envelopes)
        if changes.op_id is not None and changes.started_ms is not None:
            conn.execute(
                "UPDATE runs SET op_id = ?, started_ms = ? WHERE run_id = ?",
                (changes.op_id, changes.started_ms, rid),
            )
        if changes.phase is not None:
            conn.execute("UPDATE runs SET phase = ? WHERE run_id = ?", (changes.phase.value, rid))
        if changes.ended_ms is not None:
            conn.execute("UPDATE runs SET ended_ms = ? WHERE run_id = ?", (changes.ended_ms, rid))
        if changes.labels is not None:
            conn.execute("DELETE FROM run_labels WHERE run_id = ?", (rid,))
            conn.executemany(
                "INSERT INTO run_labels (run_id, key, value) VALUES (?, ?, ?)",
                [(rid, key, value) for key, value in changes.labels.items()],
            )
        conn.execute("UPDATE runs SET head_seq = ? WHERE run_id = ?", (envelopes[-1].seq, rid))

    def read_range(
        self, run_id: RunId, from_seq: int = 1, to_seq: int | None = None
    ) -> list[EventEnvelope]:
        lo = max(from_seq, 1)
        hi = to_seq if to_seq is not None else -1

        def query(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return conn.execute(
                "SELECT seq, body FROM events WHERE run_id = ? AND seq >= ? AND (? < 0 OR seq <= ?)"
                " ORDER BY seq",
                (str(run_id), lo, hi, hi),
            ).fetchall()

        if to_seq is not None and to_seq < lo:
            return []
        rows = self._read("read_range", query)
        return [_decode(str(run_id), seq, body) for seq, body in rows]

    def fact_binding(self, run_id: RunId, key: str) -> ArtifactId | None:
        if self._legacy:  # read-only on a version-1 file: derive it from the events
            for env in self.read_range(run_id):
                if isinstance(env.event, DomainEvent) and env.event.name == FACT_RECORDED:
                    binding = fact_binding_of(env.event)
                    if binding is not None and binding[0] == key:
                        return ArtifactId(binding[1])
            return None
        bound = self._read("fact_binding", lambda c: _fact_binding(c, str(run_id), key))
        return None if bound is None else ArtifactId(bound)

    def list_runs(
        self, limit: int | None = None, query: RunQuery | None = None
    ) -> list[RunSummary]:
        q = query or RunQuery()
        if limit is not None and limit <= 0:
            return []
        if self._legacy_listing:
            return self._read("list_runs", lambda c: _legacy_listing(c, q, limit))
        return self._read("list_runs", lambda c: _listing(c, q, limit))

    def runs_with_prefix(self, prefix: str, limit: int = 10) -> list[RunId]:
        if not prefix or limit <= 0:
            return []

        def query(conn: sqlite3.Connection) -> list[tuple[str]]:
            return conn.execute(
                "SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ? ORDER BY run_id LIMIT ?",
                (prefix, prefix_upper_bound(prefix), limit),
            ).fetchall()

        rows = self._read("runs_with_prefix", query)
        try:
            return [RunId(row[0]) for row in rows]
        except ValueError:
            raise Corruption("sqlite_run_row_invalid", "a stored run id is invalid") from None

    def run_summaries(self, run_ids: Sequence[RunId]) -> dict[str, RunSummary]:
        ids = sorted({str(r) for r in run_ids})
        if not ids:
            return {}
        if self._legacy_listing:
            return super().run_summaries(run_ids)
        return self._read("run_summaries", lambda c: _summaries_by_id(c, ids))

    # --- journals --------------------------------------------------------------------------

    @staticmethod
    def _journal_head(conn: sqlite3.Connection, journal: str) -> int:
        row = conn.execute(
            "SELECT head_seq FROM journals WHERE journal = ?", (journal,)
        ).fetchone()
        return int(row[0]) if row else 0

    def journal_head(self, journal: str) -> int:
        check_journal_id(journal)
        if self._no_journals:
            return 0
        return self._read("journal_head", lambda c: self._journal_head(c, journal))

    def journal_append(
        self, journal: str, expected_seq: int, drafts: Sequence[JournalDraft]
    ) -> list[JournalEntry]:
        items = check_drafts(journal, drafts)
        with self._write("journal_append") as conn:
            head = self._journal_head(conn, journal)
            if head != expected_seq:
                raise stale_journal(journal, expected_seq, head)
            entries = [d.at(journal, head + i) for i, d in enumerate(items, start=1)]
            if not entries:
                return []
            conn.executemany(
                "INSERT INTO journal_entries (journal, seq, body) VALUES (?, ?, ?)",
                [(journal, e.seq, e.stored_bytes()) for e in entries],
            )
            conn.execute(
                "INSERT INTO journals (journal, head_seq, created_ms, updated_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (journal) DO UPDATE SET"
                " head_seq = excluded.head_seq, updated_ms = excluded.updated_ms",
                (journal, entries[-1].seq, entries[0].ts_millis, entries[-1].ts_millis),
            )
            return entries

    def journal_read(
        self, journal: str, from_seq: int = 1, to_seq: int | None = None
    ) -> list[JournalEntry]:
        check_journal_id(journal)
        lo = max(from_seq, 1)
        if self._no_journals or (to_seq is not None and to_seq < lo):
            return []
        hi = to_seq if to_seq is not None else -1

        def query(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return conn.execute(
                "SELECT seq, body FROM journal_entries WHERE journal = ? AND seq >= ?"
                " AND (? < 0 OR seq <= ?) ORDER BY seq",
                (journal, lo, hi, hi),
            ).fetchall()

        rows = self._read("journal_read", query)
        return [JournalEntry.from_stored(journal, int(seq), body) for seq, body in rows]

    def list_journals(self, namespace: str) -> list[JournalSummary]:
        check_namespace(namespace)
        if self._no_journals:
            return []
        low, high = namespace + "/", namespace + "0"  # '0' is the character after '/'

        def query(conn: sqlite3.Connection) -> list[tuple[str, int, int, int]]:
            return conn.execute(
                "SELECT journal, head_seq, created_ms, updated_ms FROM journals"
                " WHERE journal >= ? AND journal < ? ORDER BY created_ms DESC, journal DESC",
                (low, high),
            ).fetchall()

        return [
            JournalSummary(journal=j, head_seq=h, created_ms=c, updated_ms=u)
            for j, h, c, u in self._read("list_journals", query)
        ]


_SUMMARY_COLUMNS = "r.run_id, r.op_id, r.started_ms, r.phase, r.head_seq"
SummaryRow = tuple[str, str, int, str, int]


def _where(q: RunQuery) -> tuple[str, list[object]]:
    """The SQL conditions of `q` on `runs r` (labels through their index)."""
    clauses: list[str] = []
    params: list[object] = []
    if q.op_id is not None:
        clauses.append("r.op_id = ?")
        params.append(q.op_id)
    if q.phase is not None:
        clauses.append("r.phase = ?")
        params.append(q.phase.value)
    if q.since_ms is not None:
        clauses.append("r.started_ms >= ?")
        params.append(q.since_ms)
    if q.until_ms is not None:
        clauses.append("r.started_ms < ?")
        params.append(q.until_ms)
    for key, value in q.labels.items():
        clauses.append("r.run_id IN (SELECT run_id FROM run_labels WHERE key = ? AND value = ?)")
        params += [key, value]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _summary(
    row: SummaryRow, labels: dict[str, str], ended_ms: int | None
) -> RunSummary:
    rid, op_id, started, phase, head = row
    try:
        return RunSummary(
            run_id=RunId(rid),
            op_id=op_id,
            started_ms=started,
            phase=RunPhase(phase),
            head_seq=head,
            labels=labels,
            ended_ms=ended_ms,
        )
    except (ValueError, ValidationError):
        raise Corruption("sqlite_run_row_invalid", "a stored run summary is invalid") from None


def _summaries_by_id(conn: sqlite3.Connection, ids: list[str]) -> dict[str, RunSummary]:
    """The listing rows of the runs `ids` that exist (their labels included)."""
    rows: list[tuple[str, str, int, str, int, int | None]] = []
    labels: dict[str, dict[str, str]] = {}
    for start in range(0, len(ids), _SQL_CHUNK):
        chunk = ids[start : start + _SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(
            f"SELECT {_SUMMARY_COLUMNS}, r.ended_ms FROM runs r"
            f" WHERE r.run_id IN ({marks}) AND r.head_seq > 0",
            chunk,
        ).fetchall()
        for rid, key, value in conn.execute(
            f"SELECT run_id, key, value FROM run_labels WHERE run_id IN ({marks})", chunk
        ):
            labels.setdefault(rid, {})[key] = value
    return {
        row[0]: _summary(row[:5], dict(sorted(labels.get(row[0], {}).items())), row[5])
        for row in rows
    }


def _listing(conn: sqlite3.Connection, q: RunQuery, limit: int | None) -> list[RunSummary]:
    where, params = _where(q)
    rows = conn.execute(
        f"SELECT {_SUMMARY_COLUMNS}, r.ended_ms FROM runs r{where}"
        " ORDER BY r.started_ms DESC, r.run_id DESC LIMIT ?",
        (*params, -1 if limit is None else limit),
    ).fetchall()
    labels: dict[str, dict[str, str]] = {}
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), _SQL_CHUNK):
        chunk = ids[start : start + _SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        for rid, key, value in conn.execute(
            f"SELECT run_id, key, value FROM run_labels WHERE run_id IN ({marks})", chunk
        ):
            labels.setdefault(rid, {})[key] = value
    return [
        _summary(row[:5], dict(sorted(labels.get(row[0], {}).items())), row[5]) for row in rows
    ]


def _legacy_listing(
    conn: sqlite3.Connection, q: RunQuery, limit: int | None
) -> list[RunSummary]:
    """A read-only file from before LISTING_VERSION: labels and end times come from each
    listed run's events (seq 2 and its last), the label filter is applied to them."""
    where, params = _where(q.model_copy(update={"labels": {}}))
    cursor = conn.execute(
        f"SELECT {_SUMMARY_COLUMNS} FROM runs r{where} ORDER BY r.started_ms DESC, r.run_id DESC",
        params,
    )
    out: list[RunSummary] = []
    for row in cursor.fetchall():
        rid, _, _, phase, head = row
        labels: dict[str, str] = {}
        second = conn.execute(
            "SELECT body FROM events WHERE run_id = ? AND seq = ?", (rid, SUBMISSION_SEQ)
        ).fetchone()
        env = _envelope_or_none(second[0]) if second is not None else None
        if env is not None:
            labels = submission_labels(env) or {}
        if any(labels.get(k) != v for k, v in q.labels.items()):
            continue
        ended_ms = None
        if phase != RunPhase.RUNNING.value:
            last = conn.execute(
                "SELECT body FROM events WHERE run_id = ? AND seq = ?", (rid, head)
            ).fetchone()
            env = _envelope_or_none(last[0]) if last is not None else None
            if env is not None and isinstance(env.event, RunCompleted):
                ended_ms = env.ts_millis
        out.append(_summary(row, labels, ended_ms))
        if limit is not None and len(out) >= limit:
            break
    return out


def _empty_database() -> sqlite3.Connection:
    """An empty store in memory: what a read-only store shows for a file that is not there."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    for statement in _SCHEMA:
        conn.execute(statement)
    return conn


def _decode(run_id: str, seq: int, body: bytes) -> EventEnvelope:
    try:
        env = EventEnvelope.from_bytes(body)
    except (ValueError, ValidationError):
        raise Corruption(
            "event_decode_failed",
            f"stored event {seq} of run {run_id} cannot be decoded",
            details={"run_id": run_id, "seq": seq},
        ) from None
    if str(env.run_id) != run_id or env.seq != seq:
        raise Corruption(
            "event_position_mismatch",
            f"stored event {seq} of run {run_id} names another position",
            details={"run_id": run_id, "seq": seq},
        )
    return env
