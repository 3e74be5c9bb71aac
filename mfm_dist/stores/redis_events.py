"""Redis Streams event store (docs/storage.md).

Layout (all keys of a run share the hash tag `{<run_id>}`; the names are built in one place,
`mfm_dist.stores.redis_keys`):

* `mfm:{rid}:events` — the run's stream; entry id `<seq>-1`, fields `seq` and
  `body` (the canonical envelope without `run_id`/`seq`). Never trimmed or expired.
* `mfm:{rid}:guard` — guard state: `head`, `started`, `completed`, `cancel`, `open_count`,
  `open:<state>` (the open attempt), `next:<state>` (the next attempt number),
  `done:<state>` (`1` once the state completed; it may not be entered again), and
  `batch:<batch_id> -> "<first_seq>:<count>"` of every committed call. Once the run
  completes only the run-level fields are kept.
* `mfm:{rid}:facts` — fact bindings `key -> payload_id` (single assignment);
  `fact_binding` is one HGET on it.
* `mfm:{rid}:batches` — where earlier versions kept the batch ids (deleted at completion).
* `mfm:{rid}:meta` and the global sorted set `mfm:runs` (by `started_ms`) — the
  run listing (`op_id`, `started_ms`, `phase`, and `labels` (JSON, from the
  run's `run_submitted` record), `ended_ms` (of `RunCompleted`), `ix` (`1`: indexed),
  `head` (written with those; listings read the current head from the guard hash)).
* The listing indexes, sorted sets kept by the same script: `mfm:runs:op:<op_id>`,
  `mfm:runs:phase:<phase>` (a run moves from `Running` to its final phase) and
  `mfm:runs:label:<key>=<value>`, each scored by `started_ms`, and `mfm:runs:ids`
  (every run id, score 0) for id-prefix lookups (`ZRANGEBYLEX`).

Listing (`list_runs(limit, query)`): the smallest index the query names (by `ZCARD`)
is walked newest first within the start window (`ZREVRANGEBYSCORE`), and the other
conditions are checked on each run's meta hash, fetched a page at a time in one
pipeline — a listing never reads a stream. Runs recorded by an earlier version (no
`ix`) are indexed once, by the first listing or prefix lookup that finds the
`mfm:runs:index_version` marker missing (`index.lua`, reading each such run's seq 2
and last event), so every writer of a store must run this version or a later one.

`append` and `append_next` are each ONE call of `append.lua`, which checks the
head (positional appends), enforces the guards of `stores/guards.py` (envelope,
`state_already_completed`, `fact_conflict`, `fact_malformed`, the cancel rules), and
XADDs the
whole batch — all or nothing. `append_next` lets the script assign the next
seqs, so parallel writers never race on positions. Per event the script gets two
arguments: the guard fields packed in one string (`_guard_info`) and the stored body.

Retries: connection errors and timeouts are retried with bounded backoff, then
`StorageUnavailable` (retryable). Refused credentials or permissions (a wrong or
missing password, an ACL without the command) are not retried: they fail at once
with `storage_auth_failed` (not retryable), although redis-py's
`AuthenticationError` is a `ConnectionError`. A retried append is safe because every call
carries a client-generated batch id that the script records with the batch: a
retry after an ambiguous failure (timeout after the server committed) finds its
own batch and returns the same seqs instead of appending twice.

Durability: with Redis AOF `appendfsync everysec`, about one second of
acknowledged appends can be lost if the server host crashes. `appendfsync always`
closes that gap server-wide. Alternatively `?durable=1` (or `durable=True`)
calls `WAITAOF 1 0 <timeout>` after each append, so an append returns only once it
is fsynced locally; this needs Redis >= 7.2 with `appendonly yes`, and the store
refuses to construct (`redis_durable_unsupported`) otherwise.

The script touches the run's keys and the global run index, so the store needs
a single Redis primary (Redis Cluster is not supported). Credentials: put them
in the URL or in `MFM_REDIS_USERNAME` / `MFM_REDIS_PASSWORD`; printed URLs are
always redacted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mfm_dist.canonical import canonical_bytes_unchecked
from mfm_dist.errors import (
    ConcurrencyError,
    Corruption,
    InvalidInput,
    StorageError,
    StorageUnavailable,
)
from mfm_dist.events import (
    FACT_RECORDED,
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
    is_cancel_request,
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
from mfm_dist.secrets import redact_url
from mfm_dist.settings import RedisCredentials, truthy
from mfm_dist.stores.base import (
    EventStore,
    labels_of_submission,
    prefix_upper_bound,
    stale_head,
    stale_journal,
    submission_labels,
)
from mfm_dist.stores.guards import GuardViolation, fact_binding_of
from mfm_dist.stores.redis_keys import (
    INDEX_VERSION_KEY,
    JOURNAL_INDEX_KEY,
    RUN_IDS_KEY,
    RUN_INDEX_KEY,
    event_keys,
    journal_keys,
    label_index,
    op_index,
    phase_index,
)
from mfm_dist.stores.retry import BoundedRetries
from mfm_dist.submission import RUN_SUBMITTED_EVENT

T = TypeVar("T")

INDEX_VERSION = b"1"
LISTING_PAGE = 500
Derived = tuple[dict[str, str] | None, int | None]  # (labels, ended_ms) read from a stream
WAITAOF_MIN_VERSION = (7, 2)
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)
_OWN_QUERY_KEYS = ("durable", "durable_timeout_ms")
# Credentials refused or lacking a permission: no retry can fix these. redis-py maps the
# replies to these classes (two of them subclass ConnectionError); a reply it does not map
# (e.g. from inside a script) still starts with the server's error code.
_CREDENTIALS_REFUSED = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthenticationWrongNumberOfArgsError,
)
_PERMISSION_DENIED = (redis.exceptions.NoPermissionError, redis.exceptions.AuthorizationError)
_AUTH_REPLY_CODES = ("WRONGPASS", "NOAUTH", "NOPERM")


def is_auth_failure(exc: BaseException) -> bool:
    """True if Redis refused our credentials or a permission (never transient)."""
    if isinstance(exc, (*_CREDENTIALS_REFUSED, *_PERMISSION_DENIED)):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_AUTH_REPLY_CODES)


def auth_failed(where: str, what: str, exc: BaseException) -> StorageError:
    """`storage_auth_failed` for `exc` (an auth failure), naming only the redacted `where`.

    The server's own text is not quoted (it may name the user); the message never carries
    the credentials."""
    denied = isinstance(exc, _PERMISSION_DENIED) or str(exc).startswith("NOPERM")
    reason = (
        f"denied the permission to run {what}"
        if denied
        else f"refused the credentials (a wrong or missing user or secret) during {what}"
    )
    return StorageError(
        "storage_auth_failed",
        f"redis at {where} {reason} ({type(exc).__name__}); not retried: check the "
        "credentials in the store URL or the MFM_REDIS_* settings",
        details={"action": what, "error": type(exc).__name__},
    )


def _load_script(name: str = "append.lua") -> str:
    return resources.files("mfm_dist.stores").joinpath(name).read_text(encoding="utf-8")


def _labels_json(labels: dict[str, str]) -> bytes:
    return orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)


@lru_cache(maxsize=4096)
def _append_keys(run_id: str) -> tuple[bytes, bytes, bytes]:
    """The KEYS of append.lua: the run's stream and guard hash, and the global run index."""
    keys = event_keys(run_id)
    return (keys[0], keys[1], RUN_INDEX_KEY)


def _parse_version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _body(event: Any, ts_millis: int, state_id: str | None, attempt: int | None) -> bytes:
    """The stored form: an envelope without `run_id` and `seq` (those are the stream's)."""
    return canonical_bytes_unchecked(
        {
            "event": event.model_dump(mode="json"),
            "ts_millis": ts_millis,
            # A plain str: the compiled canonical pass clears exact JSON types only (an id's
            # str subclass would send the whole envelope down the slower reference path).
            "state_id": None if state_id is None else str(state_id),
            "attempt": attempt,
        }
    )


def _guard_info(event: Any, ts_millis: int, state_id: str | None, attempt: int | None) -> str:
    """The script's guard fields of one event, as one string (see the header of append.lua):
    `<kind> <env_state> <env_attempt> <rest>`; ids and numbers hold no space, and the only
    free text (a fact key, the labels JSON) comes last."""
    env = f"{'' if state_id is None else state_id} {'' if attempt is None else attempt}"
    if isinstance(event, DomainEvent):
        if event.name == FACT_RECORDED:
            binding = fact_binding_of(event)
            if binding is None:
                return f"FM {env} "
            return f"F {env} {binding[1]} {binding[0]}"
        if is_cancel_request(event, state_id):
            return f"C {env} "
        if event.name == RUN_SUBMITTED_EVENT and state_id is None:
            labels = labels_of_submission(event.payload)  # the script keeps them only at seq 2
            if labels is not None:
                return f"L {env} {_labels_json(labels).decode()}"
        return f"D {env} "
    if isinstance(event, StateEntered):
        return f"SE {env} {event.state_id} {event.attempt}"
    if isinstance(event, StateCompleted):
        return f"SC {env} {event.state_id}"
    if isinstance(event, StateFailed):
        return f"SF {env} {event.state_id}"
    if isinstance(event, RunStarted):
        return f"RS {env} {ts_millis} {event.op_id}"
    if isinstance(event, RunCompleted):
        return f"RC {env} {ts_millis} {event.status.value}"
    return f"D {env} "


def _event_args(
    event: Any, ts_millis: int, state_id: str | None, attempt: int | None
) -> tuple[str, bytes]:
    """The two script arguments of one event: its guard fields and its stored body."""
    return (
        _guard_info(event, ts_millis, state_id, attempt),
        _body(event, ts_millis, state_id, attempt),
    )


SERVER_BUSY_ERRORS: tuple[type[redis.RedisError], ...] = (
    redis.exceptions.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
)
"""redis-py's classes for the "busy" replies below (it strips the code from their text)."""
BUSY_REPLY_CODES = ("BUSY", "LOADING", "OOM", "TRYAGAIN", "MASTERDOWN")
"""Error replies that say "not now" rather than "never": a busy script, loading, out of
memory, a resharding or a primary being replaced."""


def is_server_busy(exc: BaseException) -> bool:
    """True for a Redis reply that says "not now" rather than "never" (the one list of
    them: the event store maps it to `redis_server_busy`, the workers retry it)."""
    if isinstance(exc, SERVER_BUSY_ERRORS):
        return True
    return isinstance(exc, redis.RedisError) and str(exc).startswith(BUSY_REPLY_CODES)


def _retryable(exc: Exception) -> bool:
    """A connection fault worth another try; refused credentials never are (redis-py's
    `AuthenticationError` is a `ConnectionError`)."""
    return isinstance(exc, _TRANSIENT) and not is_auth_failure(exc)


class RedisEventStore(EventStore):
    """Append-only per-run Redis Streams with the envelope guards enforced in Lua."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        url: str = "redis://",
        durable: bool = False,
        durable_timeout_ms: int = 1000,
        retries: int = 5,
        backoff_s: float = 0.05,
    ) -> None:
        # redis-py annotates replies as sync/async unions; we only use the sync client.
        self._client: Any = client
        self.url = redact_url(url)
        self._durable = durable
        self._durable_timeout_ms = durable_timeout_ms
        self._retries = max(retries, 0)
        self._retry = BoundedRetries(self._retries, backoff_s, max_backoff_s=1.0)
        self._script = client.register_script(_load_script())
        self._journal_script = client.register_script(_load_script("journal.lua"))
        self._index_script = client.register_script(_load_script("index.lua"))
        self._indexed = False  # the index-version marker was seen (no old runs to index)
        if durable:
            self._check_durable_support()

    @property
    def client(self) -> Any:
        """The redis-py client (shared with the distributed runtime's coordination keys)."""
        return self._client

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        durable: bool | None = None,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        retries: int = 5,
        credentials: RedisCredentials | None = None,
    ) -> RedisEventStore:
        """`redis://[user:pass@]host:port/db[?durable=1&durable_timeout_ms=N]`, rediss://, unix://.

        `credentials` (the settings' `MFM_REDIS_USERNAME`/`MFM_REDIS_PASSWORD`) are used when
        the URL carries no password of its own; the store never reads the environment."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_QUERY_KEYS}
        rest = [(k, v) for k, v in query if k not in _OWN_QUERY_KEYS]
        client_url = urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment)
        )
        kwargs: dict[str, Any] = dict(credentials.client_kwargs(url)) if credentials else {}
        try:
            client = redis.Redis.from_url(
                client_url,
                decode_responses=False,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                # Retries are ours (bounded, and safe thanks to batch ids).
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                **kwargs,
            )
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                "store_url_invalid", f"invalid redis URL {redact_url(url)}: {type(exc).__name__}"
            ) from None
        is_durable = truthy(own.get("durable", "0")) if durable is None else durable
        try:
            timeout_ms = int(own.get("durable_timeout_ms", "1000"))
        except ValueError:
            raise InvalidInput(
                "store_url_invalid", f"durable_timeout_ms must be an integer in {redact_url(url)}"
            ) from None
        return cls(
            client, url=url, durable=is_durable, durable_timeout_ms=timeout_ms, retries=retries
        )

    # --- plumbing ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` with bounded retries on connection faults; `fn` must be idempotent."""
        try:
            return self._retry.call(fn, _retryable)
        except redis.RedisError as exc:
            if is_auth_failure(exc):  # before _TRANSIENT: AuthenticationError is one
                raise auth_failed(self.url, what, exc) from None
            if not isinstance(exc, _TRANSIENT):
                raise self._command_failed(what, exc) from None
            raise StorageUnavailable(
                f"redis at {self.url} unavailable during {what} after "
                f"{self._retries + 1} attempts ({type(exc).__name__})"
            ) from None

    def _command_failed(self, what: str, exc: redis.RedisError) -> StorageError:
        if is_server_busy(exc):  # out of memory, loading, busy script: it will pass
            return StorageUnavailable(
                f"redis at {self.url} cannot serve {what} now ({type(exc).__name__})",
                code="redis_server_busy",
            )
        return StorageError(
            "redis_command_failed",
            f"redis at {self.url} rejected {what} ({type(exc).__name__})",
        )

    def _check_durable_support(self) -> None:
        info = self._call("INFO", lambda: self._client.info("server"))
        version_text = str(info.get("redis_version", "0"))
        if _parse_version(version_text) < WAITAOF_MIN_VERSION:
            raise InvalidInput(
                "redis_durable_unsupported",
                f"durable mode needs WAITAOF (Redis >= 7.2); the server at {self.url} "
                f"runs {version_text}",
            )
        config = self._call("CONFIG GET", lambda: self._client.config_get("appendonly"))
        if config.get(b"appendonly", config.get("appendonly")) not in (b"yes", "yes"):
            raise InvalidInput(
                "redis_durable_unsupported",
                f"durable mode needs appendonly yes on the server at {self.url}",
            )

    def _wait_aof(self) -> None:
        reply = self._call(
            "WAITAOF",
            lambda: self._client.execute_command("WAITAOF", 1, 0, self._durable_timeout_ms),
        )
        if not reply or int(reply[0]) < 1:
            # The batch is committed in memory; a retry of the same call waits again.
            raise StorageUnavailable(
                f"redis at {self.url} did not fsync the append within "
                f"{self._durable_timeout_ms} ms",
                code="redis_aof_not_synced",
            )

    def _run_script(
        self, run_id: str, expected_seq: int | None, positions_ok: bool, event_args: list[Any]
    ) -> tuple[int, int]:
        """One guarded append (positional unless `expected_seq` is None); returns
        (first_seq, count) or raises the script's verdict. `event_args` holds two arguments
        per event (`_event_args`)."""
        keys = _append_keys(run_id)
        # A fresh batch id per call (not per attempt): a retry finds its committed batch.
        call = "batch:" + os.urandom(16).hex()
        if expected_seq is not None:
            call += f"{'=' if positions_ok else '!'}{expected_seq}"
        args = [call, *event_args]
        reply = self._call("append", lambda: self._script(keys=keys, args=args))
        status = reply[0]
        if status == b"ok" or status == b"dup":
            if self._durable:
                self._wait_aof()
            return int(reply[1]), int(reply[2])
        verdict = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
        status = verdict[0]
        if status == "stale":
            raise stale_head(run_id, expected_seq or 0, int(verdict[1]))
        if status == "position":
            raise ConcurrencyError(
                f"envelopes do not continue run {run_id} at {(expected_seq or 0) + 1}",
                code="envelope_position_invalid",
            )
        if status == "guard":
            raise GuardViolation(verdict[1], verdict[3], seq=int(verdict[2]))
        if status == "layout":
            raise StorageError(
                "guard_layout_unsupported",
                f"run {run_id}'s guard state has layout {verdict[1]!r}, which this version "
                "does not know (written by a newer mfm-dist?); nothing was appended",
            )
        raise StorageError("redis_script_reply_invalid", f"unexpected append reply {status!r}")

    # --- EventStore ----------------------------------------------------------------------------

    def open_attempt_count(self, run_id: RunId) -> int:
        """How many attempts of the run are open now (the guard's own counter, O(1))."""
        guard = event_keys(str(run_id))[1]
        value = self._call("HGET", lambda: self._client.hget(guard, "open_count"))
        return int(value) if value is not None else 0

    def head_seq(self, run_id: RunId) -> int:
        guard = event_keys(str(run_id))[1]
        value = self._call("HGET", lambda: self._client.hget(guard, "head"))
        return int(value) if value is not None else 0

    def append(self, run_id: RunId, expected_seq: int, envelopes: Sequence[EventEnvelope]) -> None:
        rid = str(run_id)
        positions_ok = all(
            str(env.run_id) == rid and env.seq == expected_seq + offset
            for offset, env in enumerate(envelopes, start=1)
        )
        args: list[Any] = []
        if positions_ok:
            for env in envelopes:
                args += _event_args(env.event, env.ts_millis, env.state_id, env.attempt)
        self._run_script(rid, expected_seq, positions_ok, args)

    def append_next(self, run_id: RunId, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
        if not drafts:
            return []
        rid = RunId(run_id)
        args: list[Any] = []
        for draft in drafts:
            ts, state, attempt = draft.ts_millis, draft.state_id, draft.attempt
            args.append(_guard_info(draft.event, ts, state, attempt))
            args.append(_body(draft.event, ts, state, attempt))
        first, count = self._run_script(rid, None, True, args)
        if count != len(drafts):
            raise StorageError(
                "redis_script_reply_invalid", f"append reply covers {count} of {len(drafts)} events"
            )
        return [draft.at(rid, first + i) for i, draft in enumerate(drafts)]

    def read_range(
        self, run_id: RunId, from_seq: int = 1, to_seq: int | None = None
    ) -> list[EventEnvelope]:
        rid = str(run_id)
        start = max(from_seq, 1)
        if to_seq is not None and to_seq < start:
            return []
        stream = event_keys(rid)[0]
        end = "+" if to_seq is None else f"{to_seq}-1"
        entries = self._call("XRANGE", lambda: self._client.xrange(stream, f"{start}-1", end))
        return [_checked_envelope(rid, entry_id, fields) for entry_id, fields in entries]

    def fact_binding(self, run_id: RunId, key: str) -> ArtifactId | None:
        facts = event_keys(str(run_id))[2]
        value = self._call("HGET", lambda: self._client.hget(facts, key))
        return None if value is None else ArtifactId(value.decode())

    # --- listings ------------------------------------------------------------------------------

    def list_runs(
        self, limit: int | None = None, query: RunQuery | None = None
    ) -> list[RunSummary]:
        if limit is not None and limit <= 0:
            return []
        self._ensure_indexed()
        q = query or RunQuery()
        driver = self._driver_index(q)
        if driver is None:
            return []
        windowed = q.since_ms is not None or q.until_ms is not None
        low = "-inf" if q.since_ms is None else str(q.since_ms)
        high = "+inf" if q.until_ms is None else f"({q.until_ms}"
        # With at most one index named, the walk itself answers the query: fetch no more
        # than asked; otherwise over-fetch, as some runs of the walk fail the other tests.
        named = (q.op_id is not None) + (q.phase is not None) + len(q.labels)
        floor = 1 if named <= 1 else 50
        page = LISTING_PAGE if limit is None else min(max(limit, floor), LISTING_PAGE)
        out: list[RunSummary] = []
        seen: set[str] = set()
        offset = 0
        while True:
            members = self._page(driver, windowed, high, low, offset, page)
            if not members:
                return out
            offset += len(members)
            run_ids = [m.decode() for m in members if m.decode() not in seen]
            seen.update(run_ids)
            for summary in self._summaries(run_ids):
                if q.matches(summary):
                    out.append(summary)
                    if limit is not None and len(out) >= limit:
                        return out
            if len(members) < page:
                return out

    def _page(
        self, key: bytes, windowed: bool, high: str, low: str, start: int, count: int
    ) -> list[bytes]:
        """Members of an index, newest first, from `start` (by start window if `windowed`)."""
        if windowed or key != RUN_INDEX_KEY:
            return list(
                self._call(
                    "ZREVRANGEBYSCORE",
                    lambda: self._client.zrevrangebyscore(key, high, low, start=start, num=count),
                )
            )
        return list(
            self._call("ZREVRANGE", lambda: self._client.zrevrange(key, start, start + count - 1))
        )

    def _driver_index(self, q: RunQuery) -> bytes | None:
        """The smallest index the query names (None: one of them is empty: no run matches)."""
        keys: list[bytes] = []
        if q.op_id is not None:
            keys.append(op_index(q.op_id))
        if q.phase is not None:
            keys.append(phase_index(q.phase.value))
        keys += [label_index(k, v) for k, v in q.labels.items()]
        if not keys:
            return RUN_INDEX_KEY
        if len(keys) == 1:
            return keys[0]

        def sizes() -> list[int]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.zcard(key)
            return [int(n) for n in pipe.execute()]

        cards = self._call("ZCARD", sizes)
        smallest = min(range(len(keys)), key=lambda i: cards[i])
        return keys[smallest] if cards[smallest] > 0 else None

    def _summaries(self, run_ids: list[str]) -> list[RunSummary]:
        """The listing rows of `run_ids` from their meta hashes (one pipeline); a run not
        yet indexed (recorded by an earlier version) is indexed now."""
        if not run_ids:
            return []

        def fetch() -> list[Any]:
            # One transaction, so each run's meta and head are of the same moment (the
            # current head is the guard hash's; append.lua writes the meta one only when it
            # touches the meta hash anyway).
            pipe = self._client.pipeline(transaction=True)
            for rid in run_ids:
                keys = event_keys(rid)
                pipe.hgetall(keys[4])
                pipe.hget(keys[1], "head")
            return list(pipe.execute())

        replies = self._call("HGETALL", fetch)
        metas = dict(zip(run_ids, replies[0::2], strict=True))
        heads = dict(zip(run_ids, replies[1::2], strict=True))
        stale = [rid for rid, meta in metas.items() if meta and meta.get(b"ix") != b"1"]
        derived = self._index_runs(stale) if stale else {}
        rows = []
        for rid in run_ids:
            meta = metas[rid]
            if not meta:
                continue
            labels: dict[str, str] = {}
            if b"labels" in meta:
                labels = dict(orjson.loads(meta[b"labels"]))
            ended = int(meta[b"ended_ms"]) if b"ended_ms" in meta else None
            if rid in derived:
                labels = derived[rid][0] or labels
                ended = ended if ended is not None else derived[rid][1]
            rows.append(
                RunSummary(
                    run_id=RunId(rid),
                    op_id=meta[b"op_id"].decode(),
                    started_ms=int(meta[b"started_ms"]),
                    phase=RunPhase(meta[b"phase"].decode()),
                    head_seq=int(heads[rid] or meta.get(b"head") or 0),
                    labels=labels,
                    ended_ms=ended,
                )
            )
        return rows

    def runs_with_prefix(self, prefix: str, limit: int = 10) -> list[RunId]:
        if not prefix or limit <= 0:
            return []
        self._ensure_indexed()
        low = b"[" + prefix.encode()
        high = b"(" + prefix_upper_bound(prefix).encode()
        members = self._call(
            "ZRANGEBYLEX",
            lambda: self._client.zrangebylex(RUN_IDS_KEY, low, high, start=0, num=limit),
        )
        return [RunId(m.decode()) for m in members]

    # --- indexing runs recorded before the listing indexes ---------------------------------------

    def _ensure_indexed(self) -> None:
        """Index every run an earlier version recorded, once per store (see the module doc)."""
        if self._indexed:
            return
        marker = self._call("GET", lambda: self._client.get(INDEX_VERSION_KEY))
        if marker != INDEX_VERSION:
            offset = 0
            while True:
                members = self._ascending(offset)
                if not members:
                    break
                offset += len(members)
                run_ids = [m.decode() for m in members]

                def flags(ids: list[str] = run_ids) -> list[Any]:
                    pipe = self._client.pipeline(transaction=False)
                    for rid in ids:
                        pipe.hget(event_keys(rid)[4], "ix")
                    return list(pipe.execute())

                marks = self._call("HGET", flags)
                stale = [rid for rid, ix in zip(run_ids, marks, strict=True) if ix != b"1"]
                if stale:
                    self._index_runs(stale)
            self._call("SET", lambda: self._client.set(INDEX_VERSION_KEY, INDEX_VERSION))
        self._indexed = True

    def _ascending(self, start: int) -> list[bytes]:
        """A page of every run id, oldest first (the indexing pass)."""
        return list(
            self._call(
                "ZRANGE",
                lambda: self._client.zrange(RUN_INDEX_KEY, start, start + LISTING_PAGE - 1),
            )
        )

    def _index_runs(self, run_ids: list[str]) -> dict[str, Derived]:
        """Derive labels and end time of runs from their streams (seq 2 and the last event)
        and index them (`index.lua`); returns what was derived."""

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for rid in run_ids:
                stream = event_keys(rid)[0]
                pipe.xrange(stream, "2-1", "2-1")
                pipe.xrevrange(stream, "+", "-", count=1)
            return list(pipe.execute())

        replies = self._call("XRANGE", read)
        derived: dict[str, Derived] = {}
        calls: list[tuple[list[bytes], list[Any]]] = []
        for i, rid in enumerate(run_ids):
            second, last = replies[2 * i], replies[2 * i + 1]
            labels = None
            env = _decode_entry(rid, second[0][1]) if second else None
            if env is not None:
                labels = submission_labels(env)
            ended = None
            env = _decode_entry(rid, last[0][1]) if last else None
            if env is not None and isinstance(env.event, RunCompleted):
                ended = env.ts_millis
            derived[rid] = (labels, ended)
            keys = [event_keys(rid)[4], RUN_INDEX_KEY]
            args = [
                rid,
                _labels_json(labels) if labels is not None else b"",
                str(ended) if ended is not None else "",
            ]
            calls.append((keys, args))

        def index() -> None:  # idempotent: a retry after an ambiguous failure is harmless
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                self._index_script(keys=keys, args=args, client=pipe)
            pipe.execute()

        self._call("index", index)
        return derived

    def run_summaries(self, run_ids: Sequence[RunId]) -> dict[str, RunSummary]:
        ids = sorted({str(r) for r in run_ids})
        out: dict[str, RunSummary] = {}
        for k in range(0, len(ids), 1000):
            for row in self._summaries(ids[k : k + 1000]):
                out[str(row.run_id)] = row
        return out

    # --- journals ------------------------------------------------------------------------------

    def journal_head(self, journal: str) -> int:
        meta = journal_keys(check_journal_id(journal))[1]
        value = self._call("HGET", lambda: self._client.hget(meta, "head"))
        return int(value) if value is not None else 0

    def journal_append(
        self, journal: str, expected_seq: int, drafts: Sequence[JournalDraft]
    ) -> list[JournalEntry]:
        items = check_drafts(journal, drafts)
        keys = [*journal_keys(journal), JOURNAL_INDEX_KEY]
        args: list[Any] = [str(expected_seq), uuid.uuid4().hex, journal, str(len(items))]
        for draft in items:
            args += [str(draft.ts_millis), draft.stored_bytes()]
        reply = self._call(
            "journal_append", lambda: self._journal_script(keys=keys, args=args)
        )
        verdict = [x.decode() if isinstance(x, bytes) else str(x) for x in reply]
        if verdict[0] == "stale":
            raise stale_journal(journal, expected_seq, int(verdict[1]))
        if verdict[0] not in ("ok", "dup") or int(verdict[2]) != len(items):
            raise StorageError(
                "redis_script_reply_invalid", f"unexpected journal append reply {verdict[0]!r}"
            )
        first = int(verdict[1])
        return [d.at(journal, first + i) for i, d in enumerate(items)]

    def journal_read(
        self, journal: str, from_seq: int = 1, to_seq: int | None = None
    ) -> list[JournalEntry]:
        stream = journal_keys(check_journal_id(journal))[0]
        start = max(from_seq, 1)
        if to_seq is not None and to_seq < start:
            return []
        end = "+" if to_seq is None else f"{to_seq}-1"
        rows = self._call("XRANGE", lambda: self._client.xrange(stream, f"{start}-1", end))
        return [
            JournalEntry.from_stored(journal, int(fields[b"seq"]), fields[b"body"])
            for _entry_id, fields in rows
        ]

    def list_journals(self, namespace: str) -> list[JournalSummary]:
        prefix = check_namespace(namespace) + "/"
        members = self._call(
            "ZREVRANGE", lambda: self._client.zrevrange(JOURNAL_INDEX_KEY, 0, -1)
        )
        names = sorted(
            {m.decode() for m in members if m.decode().startswith(prefix)}, reverse=True
        )

        def fetch() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(journal_keys(name)[1])
            return list(pipe.execute())

        metas = self._call("HGETALL", fetch) if names else []
        rows = [
            JournalSummary(
                journal=name,
                head_seq=int(meta[b"head"]),
                created_ms=int(meta[b"created_ms"]),
                updated_ms=int(meta[b"updated_ms"]),
            )
            for name, meta in zip(names, metas, strict=True)
            if meta
        ]
        rows.sort(key=lambda r: (r.created_ms, r.journal), reverse=True)
        return rows

    def close(self) -> None:
        self._client.close()


def _envelope(run_id: str, fields: dict[bytes, bytes]) -> EventEnvelope:
    data = orjson.loads(fields[b"body"])
    data["run_id"] = run_id
    data["seq"] = int(fields[b"seq"])
    return EventEnvelope.model_validate(data)


def _checked_envelope(run_id: str, entry_id: bytes, fields: dict[bytes, bytes]) -> EventEnvelope:
    """A stream entry as an envelope, with the codes the SQLite store uses for bad data."""
    seq_text = entry_id.decode(errors="replace").split("-", 1)[0]
    details = {"run_id": run_id, "seq": int(seq_text) if seq_text.isdigit() else seq_text}
    try:
        env = _envelope(run_id, fields)
    except (ValueError, KeyError, TypeError):
        raise Corruption(
            "event_decode_failed",
            f"stored event {seq_text} of run {run_id} cannot be decoded",
            details=details,
        ) from None
    if str(env.seq) != seq_text:
        raise Corruption(
            "event_position_mismatch",
            f"stored event {seq_text} of run {run_id} names another position",
            details=details,
        )
    return env


def _decode_entry(run_id: str, fields: dict[bytes, bytes]) -> EventEnvelope | None:
    """A stream entry as an envelope, or None if it does not decode (indexing skips it)."""
    try:
        return _envelope(run_id, fields)
    except (ValueError, KeyError):
        return None


def running_run_ids(client: Any, page: int = LISTING_PAGE) -> Iterator[str]:
    """Ids of every RUNNING run in the run index, in pages (each run at least once), read
    from the runs' meta hashes — for code that holds a bare client rather than a store (the
    cluster's timer poller). The meta hash, not the phase index: runs an earlier version
    recorded are in the run index before any listing has indexed them."""
    batch: list[str] = []
    for member in client.zscan_iter(RUN_INDEX_KEY, count=page):
        raw = member[0] if isinstance(member, tuple) else member
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= page:
            yield from _running(client, batch)
            batch = []
    if batch:
        yield from _running(client, batch)


def _running(client: Any, run_ids: list[str]) -> Iterator[str]:
    pipe = client.pipeline(transaction=False)
    for rid in run_ids:
        pipe.hget(event_keys(rid)[4], "phase")
    for rid, phase in zip(run_ids, pipe.execute(), strict=True):
        if phase is not None and phase.decode() == RunPhase.RUNNING.value:
            yield rid
