"""RedisEventStore against real redis-server processes (see tests/support/servers.py)."""

from __future__ import annotations

import multiprocessing
import random
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import redis

from mfm_dist.errors import (
    ConcurrencyError,
    ErrorCategory,
    ErrorInfo,
    InvalidInput,
    StorageError,
    StorageUnavailable,
)
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    EventEnvelope,
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
from mfm_dist.stores.guards import DictGuardView, GuardViolation, check_batch
from mfm_dist.stores.memory import InMemoryEventStore
from mfm_dist.stores.redis_events import RedisEventStore
from mfm_dist.stores.urls import open_event_store

if TYPE_CHECKING:
    from support.servers import RedisServer

# Fixtures redis_server, redis_url, redis_factory.

SNAP = ArtifactId("a" * 64)
OTHER = ArtifactId("c" * 64)
STATES = [StateId(f"m.main.s{i}") for i in range(4)]
ATTEMPTS = 3
ERR = ErrorInfo(code="boom", category=ErrorCategory.UNKNOWN, message="failed")


def new_run() -> RunId:
    return RunId(str(uuid.uuid4()))


def started(ts: int = 1_000, op: str = "demo") -> EventDraft:
    event = RunStarted(op_id=OpId(op), manifest_id=SNAP, initial_snapshot_id=SNAP)
    return EventDraft(event=event, ts_millis=ts)


def entered(state: StateId, attempt: int) -> EventDraft:
    event = StateEntered(state_id=state, attempt=attempt, base_snapshot_id=SNAP)
    return EventDraft(event=event, ts_millis=2_000, state_id=state, attempt=attempt)


def terminal(state: StateId, attempt: int, ok: bool) -> EventDraft:
    event: StateCompleted | StateFailed
    if ok:
        event = StateCompleted(state_id=state, context_snapshot_id=SNAP)
    else:
        event = StateFailed(state_id=state, error=ERR)
    return EventDraft(event=event, ts_millis=3_000, state_id=state, attempt=attempt)


def domain(state: StateId | None, attempt: int | None, n: int = 0) -> EventDraft:
    event = DomainEvent(name="progress", payload={"n": n})
    return EventDraft(event=event, ts_millis=2_500, state_id=state, attempt=attempt)


def fact(
    key: str, payload: ArtifactId, state: StateId | None, attempt: int | None
) -> EventDraft:
    return EventDraft(
        event=fact_recorded_event(key, payload), ts_millis=2_600, state_id=state, attempt=attempt
    )


def malformed_fact(state: StateId | None, attempt: int | None) -> EventDraft:
    event = DomainEvent(name="fact_recorded", payload={"key": "k1", "payload_id": "nope"})
    return EventDraft(event=event, ts_millis=2_600, state_id=state, attempt=attempt)


def completed(status: RunStatus = RunStatus.COMPLETED) -> EventDraft:
    return EventDraft(event=RunCompleted(status=status, final_snapshot_id=SNAP), ts_millis=9_000)


def assert_valid_history(envelopes: list[EventEnvelope]) -> None:
    """Contiguous seqs, and the whole history passes the reference Python guard."""
    assert [e.seq for e in envelopes] == list(range(1, len(envelopes) + 1))
    check_batch(DictGuardView(), envelopes)


# --- concurrency: 8 processes, one run -------------------------------------------------------


def _worker(url: str, run_id: str, index: int) -> dict[str, int]:
    """Drive two states' attempts (twins do the same), re-sending every accepted kernel event."""
    store = RedisEventStore.from_url(url)
    rid = RunId(run_id)
    outcome: Counter[str] = Counter()

    def send(draft: EventDraft) -> bool:
        try:
            store.append_next(rid, [draft])
        except GuardViolation as exc:
            outcome[f"rejected:{exc.rule}"] += 1
            return False
        outcome["accepted"] += 1
        return True

    # Workers disagree on the payload of each state's shared fact: the first binding wins.
    mine = SNAP if index % 2 else OTHER
    send(fact("race", mine, None, None))  # a run-level binding every worker tries to make
    for state in (STATES[index % 4], STATES[(index + 1) % 4]):
        for attempt in range(ATTEMPTS):
            if send(entered(state, attempt)):
                # A duplicated delivery of the same StateEntered must be refused.
                assert not send(entered(state, attempt))
            send(domain(state, attempt, index))
            send(fact(f"shared:{state}", mine, state, attempt))
            final = terminal(state, attempt, ok=attempt == ATTEMPTS - 1)
            if send(final):
                # ... and so must a duplicated terminal of the same attempt.
                assert not send(final)
    store.close()
    return dict(outcome)


def test_eight_processes_append_next_one_valid_history(redis_url: str) -> None:
    store = RedisEventStore.from_url(redis_url)
    rid = new_run()
    store.append_next(rid, [started()])
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(8) as pool:
        results = pool.starmap(_worker, [(redis_url, str(rid), i) for i in range(8)])

    totals: Counter[str] = Counter()
    for result in results:
        totals.update(result)
    rejected = {k: v for k, v in totals.items() if k.startswith("rejected:")}
    assert rejected  # every duplicate delivery was refused with a GuardViolation
    assert set(rejected) <= {
        "rejected:attempt_already_open",
        "rejected:attempt_out_of_order",
        "rejected:terminal_without_open_attempt",
        "rejected:envelope_attribution_mismatch",
        "rejected:domain_event_outside_attempt",
        "rejected:state_already_completed",
        "rejected:fact_conflict",
    }

    history = store.read_range(rid)
    assert len(history) == 1 + totals["accepted"] == store.head_seq(rid)
    assert_valid_history(history)
    entries = Counter(
        (str(e.event.state_id), e.event.attempt)
        for e in history
        if isinstance(e.event, StateEntered)
    )
    assert entries and max(entries.values()) == 1
    terminals = Counter(
        (str(e.state_id), e.attempt)
        for e in history
        if isinstance(e.event, (StateCompleted, StateFailed))
    )
    assert terminals.keys() == entries.keys() and max(terminals.values()) == 1
    # Every state completed exactly once, however many twins raced to re-enter it.
    completions = Counter(
        str(e.event.state_id) for e in history if isinstance(e.event, StateCompleted)
    )
    assert completions == dict.fromkeys(map(str, STATES), 1)
    # Each contested fact key has one binding, and the store reports the first one recorded.
    def recorded(key: str) -> list[str]:
        return [
            e.event.payload["payload_id"]
            for e in history
            if isinstance(e.event, DomainEvent) and e.event.payload.get("key") == key
        ]

    race = recorded("race")
    # The first binder and the 3 other workers with the same payload; the other 4 conflict.
    assert len(race) == 4 and set(race) == {race[0]}
    assert totals["rejected:fact_conflict"] >= 4
    assert store.fact_binding(rid, "race") == race[0]
    for state in STATES:
        bound = recorded(f"shared:{state}")
        assert len(set(bound)) <= 1
        assert store.fact_binding(rid, f"shared:{state}") == (bound[0] if bound else None)
    # No attempt is left open: the run can be completed, exactly once.
    store.append_next(rid, [completed()])
    with pytest.raises(GuardViolation) as err:
        store.append_next(rid, [completed()])
    assert err.value.rule == "after_run_completed"
    assert_valid_history(store.read_range(rid))


# --- guards ----------------------------------------------------------------------------------


def _raw_state(url: str, run_id: RunId) -> tuple[Any, ...]:
    client = redis.Redis.from_url(url)
    try:
        tag = f"mfm:{{{run_id}}}:"
        return (
            client.xrange(tag + "events"),
            client.hgetall(tag + "guard"),
            client.hgetall(tag + "facts"),
            client.hgetall(tag + "meta"),
            client.hlen(tag + "batches"),
        )
    finally:
        client.close()


def test_violating_batch_leaves_everything_unchanged(redis_url: str) -> None:
    store = RedisEventStore.from_url(redis_url)
    rid = new_run()
    a = STATES[0]
    store.append_next(rid, [started(), entered(a, 0), fact("k", SNAP, a, 0)])
    before = _raw_state(redis_url, rid)

    bad_batches = [
        [domain(a, 0), entered(a, 0)],  # duplicate StateEntered at the end
        [terminal(a, 0, ok=True), terminal(a, 0, ok=True)],  # duplicate terminal
        [terminal(a, 0, ok=True), entered(a, 2)],  # attempt gap
        [domain(a, 0), fact("k", OTHER, a, 0)],  # fact conflict
        [terminal(a, 0, ok=True), entered(a, 1)],  # re-entry after completion
        [terminal(a, 0, ok=True), domain(a, 0), entered(a, 1)],
        [malformed_fact(a, 0)],
        [fact("new", SNAP, a, 0), malformed_fact(a, 0)],  # binds nothing
        [domain(STATES[1], 0)],  # domain event outside an attempt
        [completed()],  # attempt still open
        [started()],  # RunStarted twice
    ]
    for batch in bad_batches:
        with pytest.raises(GuardViolation):
            store.append_next(rid, batch)
        assert _raw_state(redis_url, rid) == before

    with pytest.raises(ConcurrencyError) as err:
        store.append(rid, 1, [domain(a, 0).at(rid, 2)])
    assert err.value.code == "expected_seq_mismatch"
    with pytest.raises(ConcurrencyError) as err:
        store.append(rid, 3, [domain(a, 0).at(rid, 5)])
    assert err.value.code == "envelope_position_invalid"
    assert _raw_state(redis_url, rid) == before


def test_first_event_must_be_run_started(redis_url: str) -> None:
    store = RedisEventStore.from_url(redis_url)
    rid = new_run()
    with pytest.raises(GuardViolation) as err:
        store.append_next(rid, [entered(STATES[0], 0)])
    assert err.value.rule == "run_not_started"
    assert store.head_seq(rid) == 0
    assert store.list_runs() == []


def test_fact_single_assignment(redis_url: str) -> None:
    store = RedisEventStore.from_url(redis_url)
    rid = new_run()
    a = STATES[0]
    store.append_next(rid, [started(), entered(a, 0), fact("price", SNAP, a, 0)])
    # Same key, same payload id: accepted (e.g. a retried attempt re-recording the fact).
    store.append_next(rid, [fact("price", SNAP, a, 0)])
    with pytest.raises(GuardViolation) as err:
        store.append_next(rid, [fact("price", OTHER, a, 0)])
    assert err.value.rule == "fact_conflict"
    assert "price" not in str(err.value)
    # Within one batch too.
    with pytest.raises(GuardViolation) as err:
        store.append_next(rid, [fact("fresh", SNAP, a, 0), fact("fresh", OTHER, a, 0)])
    assert err.value.rule == "fact_conflict"
    store.append_next(rid, [fact("fresh", OTHER, a, 0)])
    assert store.head_seq(rid) == 5
    assert store.fact_binding(rid, "price") == SNAP
    assert store.fact_binding(rid, "fresh") == OTHER
    assert store.fact_binding(rid, "never") is None
    assert store.fact_binding(new_run(), "price") is None
    # The completion guard lives in the same hash as the rest of the guard state.
    store.append_next(rid, [terminal(a, 0, ok=True)])
    guard = _raw_state(redis_url, rid)[1]
    assert guard[f"done:{a}".encode()] == b"1"
    with pytest.raises(GuardViolation) as err:
        store.append_next(rid, [entered(a, 1)])
    assert err.value.rule == "state_already_completed"


def test_a_guard_hash_of_another_layout_is_refused_and_nothing_is_written(
    redis_url: str,
) -> None:
    """`started` is the guard hash's layout version: a hash a later, incompatible layout
    wrote is never misread by this script (e.g. an old worker during a rolling upgrade)."""
    store = RedisEventStore.from_url(redis_url)
    client = store.client
    rid = new_run()
    a = STATES[0]
    store.append_next(rid, [started(), entered(a, 0)])
    tag = f"mfm:{{{rid}}}:"
    assert client.hget(tag + "guard", "started") == b"1"
    client.hset(tag + "guard", "started", "2")
    before = client.xlen(tag + "events")
    for append in (
        lambda: store.append_next(rid, [terminal(a, 0, ok=True)]),
        lambda: store.append(rid, 2, [terminal(a, 0, ok=True).at(rid, 3)]),
    ):
        with pytest.raises(StorageError) as err:
            append()
        assert err.value.code == "guard_layout_unsupported"
        assert err.value.info.retryable is False
    assert client.xlen(tag + "events") == before
    client.hset(tag + "guard", "started", "1")  # this layout again: appends go on
    store.append_next(rid, [terminal(a, 0, ok=True)])
    assert store.head_seq(rid) == 3


def test_guard_hash_keeps_batch_ids_until_the_run_completes(redis_url: str) -> None:
    """Batch ids live in the guard hash (read with the guard state in one HMGET); completion
    keeps only the run-level fields there and drops an earlier version's batches hash."""
    store = RedisEventStore.from_url(redis_url)
    client = store.client
    rid = new_run()
    a = STATES[0]
    store.append_next(rid, [started(), entered(a, 0)])
    store.append_next(rid, [domain(a, 0), terminal(a, 0, ok=False), entered(a, 1)])
    tag = f"mfm:{{{rid}}}:"
    client.hset(tag + "batches", "0" * 32, "1:2")  # as an earlier version left it
    guard = client.hgetall(tag + "guard")
    assert sorted(v for k, v in guard.items() if k.startswith(b"batch:")) == [b"1:2", b"3:3"]
    assert (guard[b"head"], guard[b"open_count"]) == (b"5", b"1")
    assert (guard[f"open:{a}".encode()], guard[f"next:{a}".encode()]) == (b"1", b"1")
    assert client.hget(tag + "meta", "head") == b"2"  # written with the run's start only
    assert [r.head_seq for r in store.list_runs() if r.run_id == rid] == [5]
    store.append_next(rid, [terminal(a, 1, ok=True), completed()])
    assert client.hgetall(tag + "guard") == {
        b"head": b"7",
        b"started": b"1",
        b"completed": b"1",
        b"open_count": b"0",
    }
    assert client.exists(tag + "batches") == 0
    assert client.hget(tag + "meta", "head") == b"7"
    assert store.head_seq(rid) == 7 and store.open_attempt_count(rid) == 0
    with pytest.raises(GuardViolation) as err:
        store.append_next(rid, [domain(None, None)])
    assert err.value.rule == "after_run_completed"


FACT_KEYS = ["k1", "k2", "k3"]


def _random_draft(rng: random.Random, history: list[EventEnvelope]) -> EventDraft:
    """Mostly plausible events for the run so far, so that batches often pass the guards.

    Attempt numbers lean on the state's latest attempt, so terminals, facts and
    domain events often land in the open attempt, and re-entries after a
    completion (including duplicate deliveries of the completed attempt) are common.
    """
    state = rng.choice(STATES[:2])
    entered_so_far = sum(
        1 for e in history if isinstance(e.event, StateEntered) and e.event.state_id == state
    )
    latest = max(entered_so_far - 1, 0)
    attempt = rng.choice([latest, latest, entered_so_far, rng.randrange(4)])
    roll = rng.randrange(40)
    misattributed = {"state_id": state, "attempt": attempt} if rng.random() < 0.1 else {}
    if roll == 0:
        return started().model_copy(update=misattributed)
    if roll <= 9:
        return entered(state, rng.choice([entered_so_far, entered_so_far, attempt]))
    if roll <= 18:
        return terminal(state, attempt, ok=rng.random() < 0.6)
    if roll == 19:
        return completed().model_copy(update=misattributed)
    if roll <= 29:
        key, payload_id = rng.choice(FACT_KEYS), rng.choice([SNAP, OTHER])
        if rng.random() < 0.25:
            return EventDraft(  # run-level binding
                event=fact_recorded_event(key, payload_id), ts_millis=2_600
            )
        return fact(key, payload_id, state, attempt)
    if roll <= 31:
        return malformed_fact(rng.choice([state, None]), rng.choice([attempt, None]))
    on = rng.choice([state, None])
    # A run-level event naming an attempt is refused; rare, so histories still grow.
    return domain(on, rng.choice([attempt, None]) if on or rng.random() < 0.1 else None)


@pytest.mark.parametrize("seed", range(6))
def test_lua_guard_matches_python_guard(redis_url: str, seed: int) -> None:
    """Random batches give the same verdicts on Redis (Lua) and the reference memory store.

    When a run completes, the comparison continues on a fresh run.
    """
    rng = random.Random(seed)
    redis_store = RedisEventStore.from_url(redis_url)
    memory = InMemoryEventStore()
    runs: list[RunId] = []
    seen: Counter[str] = Counter()
    for _ in range(150):
        if not runs or any(isinstance(e.event, RunCompleted) for e in memory.read_range(runs[-1])):
            runs.append(new_run())
            for store in (memory, redis_store):
                store.append_next(runs[-1], [started()])
        rid = runs[-1]
        history = memory.read_range(rid)
        batch = [_random_draft(rng, history) for _ in range(rng.randint(1, 3))]
        outcomes: list[Any] = []
        for store in (memory, redis_store):
            try:
                outcomes.append(store.append_next(rid, batch))
            except GuardViolation as exc:
                outcomes.append((exc.rule, exc.info.details["seq"], exc.info.message))
        assert outcomes[0] == outcomes[1]
        seen[outcomes[0][0] if isinstance(outcomes[0], tuple) else "accepted"] += 1
    # The generator really exercised the rules this comparison is about.
    assert {"accepted", "state_already_completed", "fact_conflict", "fact_malformed"} <= set(seen)
    for rid in runs:
        assert redis_store.read_range(rid) == memory.read_range(rid)
        for key in FACT_KEYS:
            assert redis_store.fact_binding(rid, key) == memory.fact_binding(rid, key)
    assert sorted(redis_store.list_runs(), key=str) == sorted(memory.list_runs(), key=str)


# --- reads and listings ----------------------------------------------------------------------


def test_read_range_and_list_runs(redis_url: str) -> None:
    store = open_event_store(redis_url)
    assert isinstance(store, RedisEventStore)
    first, second = new_run(), new_run()
    a = STATES[0]
    store.append_next(first, [started(ts=5_000, op="alpha"), entered(a, 0)])
    store.append(first, 2, [terminal(a, 0, ok=True).at(first, 3), completed().at(first, 4)])
    store.append_next(second, [started(ts=7_000, op="beta")])

    history = store.read_range(first)
    assert [e.seq for e in history] == [1, 2, 3, 4]
    assert all(e.run_id == first for e in history)
    assert store.read_range(first, 2, 3) == history[1:3]
    assert store.read_range(first, 3) == history[2:]
    assert store.read_range(first, 4, 2) == []
    assert store.read_range(new_run()) == []
    assert store.head_seq(new_run()) == 0

    runs = store.list_runs()
    assert [(r.run_id, r.op_id, r.phase, r.head_seq) for r in runs] == [
        (second, "beta", RunPhase.RUNNING, 1),
        (first, "alpha", RunPhase.COMPLETED, 4),
    ]
    assert runs[1].started_ms == 5_000
    assert [r.run_id for r in store.list_runs(limit=1)] == [second]


def submitted(labels: dict[str, str], ts: int = 1_000) -> EventDraft:
    payload = {"fingerprint": "f" * 64, "idempotency_key": None, "labels": labels,
               "on_complete": None, "submitted_ms": ts}  # fmt: skip
    return EventDraft(event=DomainEvent(name="run_submitted", payload=payload), ts_millis=ts)


def command_calls(client: Any) -> Counter[str]:
    """Calls per command since the last CONFIG RESETSTAT (the server's own count)."""
    stats = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def test_filtered_listing_walks_the_smallest_index_and_reads_no_stream(redis_url: str) -> None:
    store = RedisEventStore.from_url(redis_url)
    client = store.client
    wanted = []
    for i in range(300):
        rid = new_run()
        labels = {"backfill": "b7", "part": f"{i:03d}"} if i % 60 == 0 else {"team": "x"}
        store.append_next(rid, [started(ts=10_000 + i, op="alpha"), submitted(labels)])
        if i % 60 == 0:
            wanted.append(rid)
        if i % 2 == 0:
            store.append_next(rid, [completed()])
    store.list_runs(limit=1)  # the index-version marker is read once per store object
    client.config_resetstat()
    rows = store.list_runs(
        query=RunQuery(op_id="alpha", phase=RunPhase.COMPLETED, labels={"backfill": "b7"})
    )
    assert [r.run_id for r in rows] == list(reversed(wanted))
    assert all(r.labels["backfill"] == "b7" and r.ended_ms == 9_000 for r in rows)
    calls = command_calls(client)
    assert calls["hgetall"] == len(wanted)  # only the runs of the smallest index (5 of 300)
    assert calls["xrange"] == calls["xrevrange"] == 0  # no stream was read
    client.config_resetstat()
    windowed = store.list_runs(limit=10, query=RunQuery(since_ms=10_100, until_ms=10_150))
    assert [r.started_ms for r in windowed] == list(range(10_149, 10_139, -1))
    assert command_calls(client)["hgetall"] == 10
    store.close()


def _strip_listing(client: Any) -> None:
    """Make the store look as an earlier version left it: no listing indexes, no labels or
    end times in the meta hashes, no index-version marker."""
    for key in client.scan_iter(match="mfm:runs:*"):
        client.delete(key)
    for key in client.scan_iter(match="mfm:{*}:meta"):
        client.hdel(key, "ix", "labels", "ended_ms")


def test_runs_of_an_earlier_version_are_indexed_by_the_first_listing(redis_url: str) -> None:
    store = RedisEventStore.from_url(redis_url)
    old_done, old_running, old_plain = new_run(), new_run(), new_run()
    store.append_next(old_done, [started(ts=1_000, op="alpha"), submitted({"team": "data"})])
    store.append_next(old_done, [completed(RunStatus.FAILED)])
    store.append_next(old_running, [started(ts=2_000, op="beta"), submitted({"team": "data"})])
    store.append_next(old_plain, [started(ts=3_000, op="alpha")])
    expected = store.list_runs()
    _strip_listing(store.client)
    store.close()

    upgraded = RedisEventStore.from_url(redis_url)
    # The old running run completes under the new version before anything is listed.
    upgraded.append_next(old_running, [completed()])
    assert upgraded.runs_with_prefix(str(old_done)[:8]) == [old_done]
    by_id = {r.run_id: r for r in upgraded.list_runs()}
    assert by_id[old_done] == expected[2]
    assert by_id[old_done].labels == {"team": "data"} and by_id[old_done].ended_ms == 9_000
    assert by_id[old_running].phase is RunPhase.COMPLETED
    assert by_id[old_running].labels == {"team": "data"} and by_id[old_running].ended_ms == 9_000
    assert by_id[old_plain] == expected[0]

    def ids(query: RunQuery) -> list[RunId]:
        return [r.run_id for r in upgraded.list_runs(query=query)]

    assert ids(RunQuery(labels={"team": "data"})) == [old_running, old_done]
    assert ids(RunQuery(phase=RunPhase.RUNNING)) == [old_plain]
    assert ids(RunQuery(phase=RunPhase.COMPLETED)) == [old_running]
    assert ids(RunQuery(op_id="alpha", phase=RunPhase.FAILED)) == [old_done]
    assert upgraded.client.get("mfm:runs:index_version") == b"1"
    upgraded.close()

    # A run an earlier-version writer records after that is indexed when a listing meets it.
    late = new_run()
    again = RedisEventStore.from_url(redis_url)
    again.append_next(late, [started(ts=4_000, op="alpha"), submitted({"team": "late"})])
    _meta = f"mfm:{{{late}}}:meta"
    again.client.hdel(_meta, "ix", "labels")
    for key in again.client.scan_iter(match="mfm:runs:*", _type="zset"):
        again.client.zrem(key, str(late))
    assert [r.run_id for r in again.list_runs(query=RunQuery(labels={"team": "late"}))] == []
    [row] = again.list_runs(limit=1)
    assert row.run_id == late and row.labels == {"team": "late"}
    assert [r.run_id for r in again.list_runs(query=RunQuery(labels={"team": "late"}))] == [late]
    again.close()


def test_url_credentials_redacted(redis_server: RedisServer) -> None:
    store = RedisEventStore.from_url(f"redis://user:s3cr3t@127.0.0.1:{redis_server.port}/0")
    assert "s3cr3t" not in store.url
    assert str(redis_server.port) in store.url


# --- faults, retries, durability -------------------------------------------------------------


def test_ambiguous_failure_retry_does_not_duplicate(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server commits, the reply is lost: the retry finds its batch and returns its seqs."""
    store = RedisEventStore.from_url(redis_url)
    rid = new_run()
    store.append_next(rid, [started()])
    script = store._script
    calls = {"n": 0}

    def lossy(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        result = script(*args, **kwargs)
        if calls["n"] == 1:
            raise redis.ConnectionError("reply lost")
        return result

    monkeypatch.setattr(store, "_script", lossy)
    envelopes = store.append_next(rid, [entered(STATES[0], 0), domain(STATES[0], 0)])
    assert calls["n"] == 2
    assert [e.seq for e in envelopes] == [2, 3]
    assert store.read_range(rid) == [store.read_range(rid)[0], *envelopes]
    assert store.head_seq(rid) == 3


def test_aof_always_keeps_acknowledged_appends_across_crash(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory(appendonly=True, appendfsync="always")
    store = RedisEventStore.from_url(server.url)
    rid = new_run()
    store.append_next(rid, [started()])
    acknowledged = 1
    for i in range(20):
        state = StateId(f"m.main.t{i}")
        envelopes = store.append_next(rid, [entered(state, 0), domain(state, 0)])
        acknowledged += len(envelopes)
        store.append_next(rid, [terminal(state, 0, ok=True)])
        acknowledged += 1
    before = store.read_range(rid)
    assert len(before) == acknowledged

    server.restart(kill=True)  # SIGKILL: a crash, no clean shutdown
    after = store.read_range(rid)  # the same client reconnects
    assert after == before
    # The guard state survived too, and the script is reloaded transparently.
    with pytest.raises(GuardViolation) as err:
        store.append_next(rid, [entered(StateId("m.main.t0"), 1)])
    assert err.value.rule == "state_already_completed"
    store.append_next(rid, [completed()])
    assert store.list_runs()[0].phase == RunPhase.COMPLETED


def test_server_down_is_storage_unavailable_then_recovers(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory(appendonly=True, appendfsync="always")
    store = RedisEventStore(
        redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=1),
        url=server.url,
        retries=2,
        backoff_s=0.01,
    )
    rid = new_run()
    store.append_next(rid, [started()])
    server.stop()
    with pytest.raises(StorageUnavailable) as err:
        store.append_next(rid, [entered(STATES[0], 0)])
    assert err.value.retryable
    with pytest.raises(StorageUnavailable):
        store.read_range(rid)
    server.start()
    assert store.append_next(rid, [entered(STATES[0], 0)])[0].seq == 2


def _server_version(server: RedisServer) -> tuple[int, ...]:
    client = redis.Redis(port=server.port)
    try:
        text = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return tuple(int(p) for p in text.split(".")[:2])


def test_durable_mode_needs_waitaof(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(appendonly=True, appendfsync="everysec")
    url = server.url + "?durable=1"
    if _server_version(server) < (7, 2):
        with pytest.raises(InvalidInput) as err:
            RedisEventStore.from_url(url)
        assert err.value.code == "redis_durable_unsupported"
        assert "7.2" in str(err.value)
    else:
        store = RedisEventStore.from_url(url)
        rid = new_run()
        assert store.append_next(rid, [started()])[0].seq == 1


def test_out_of_memory_is_a_retryable_storage_error(redis_factory: Callable[..., Any]) -> None:
    """`noeviction` + maxmemory: appends fail with a retryable error, nothing half-written, and
    succeed again once memory is available."""
    from mfm_dist.errors import StorageUnavailable

    server = redis_factory()
    raw = redis.Redis.from_url(server.url)
    store = RedisEventStore.from_url(server.url)
    run = new_run()
    store.append_next(run, [started()])
    used = int(raw.info("memory")["used_memory"])
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", str(used + 64 * 1024))
    filler = b"x" * 4096
    try:
        for i in range(1000):
            raw.set(f"filler:{i}", filler)
    except redis.exceptions.OutOfMemoryError:
        pass
    with pytest.raises(StorageUnavailable) as caught:
        store.append_next(run, [entered(StateId("m.main.a"), 0)])
    assert caught.value.info.retryable and caught.value.code == "redis_server_busy"
    assert store.head_seq(run) == 1
    raw.config_set("maxmemory", "0")
    store.append_next(run, [entered(StateId("m.main.a"), 0)])
    assert store.head_seq(run) == 2


@pytest.mark.parametrize(
    ("body", "seq_field", "code"),
    [
        (b"{not json", b"2", "event_decode_failed"),
        (b'{"event": {"Kernel": {"Nope": {}}}, "ts_millis": 1}', b"2", "event_decode_failed"),
        (None, b"7", "event_position_mismatch"),
    ],
)
def test_undecodable_or_misplaced_stream_entries_are_corruption(
    redis_url: str, body: bytes | None, seq_field: bytes, code: str
) -> None:
    """A stream entry written behind the store's back reads as `Corruption` with the codes
    the SQLite store uses, never as a raw decoding exception."""
    from mfm_dist.errors import Corruption

    store = RedisEventStore.from_url(redis_url)
    run = new_run()
    store.append_next(run, [started()])
    raw = redis.Redis.from_url(redis_url)
    entries = raw.xrange(f"mfm:{{{run}}}:events")
    assert entries is not None
    fields = entries[0][1]
    assert fields is not None
    good = fields[b"body"]
    raw.xadd(f"mfm:{{{run}}}:events", {"seq": seq_field, "body": body or good}, id="2-1")
    with pytest.raises(Corruption) as caught:
        store.read_range(run)
    assert caught.value.info.code == code
    assert caught.value.info.details == {"run_id": str(run), "seq": 2}
    store.close()
