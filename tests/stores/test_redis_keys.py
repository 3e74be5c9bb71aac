"""The Redis key layout (`mfm_dist.stores.redis_keys`): the names are the persisted layout
(docs/storage.md#redis-key-layout), and the event store writes no key the layout does not
name."""

from __future__ import annotations

import uuid

import redis

from mfm_dist.events import EventDraft, RunCompleted, RunStarted, RunStatus
from mfm_dist.ids import ArtifactId, OpId, RunId
from mfm_dist.results import RunPhase
from mfm_dist.stores import redis_keys as keys
from mfm_dist.stores.redis_events import RedisEventStore, running_run_ids
from support import REPO

SNAP = ArtifactId("a" * 64)


def test_the_names_are_the_documented_layout() -> None:
    rid = "0192-run"
    assert keys.run_tag(rid) == "mfm:{0192-run}:"
    assert keys.run_key(rid, keys.LOCK) == "mfm:{0192-run}:lock"
    assert keys.lease_key(rid, "m.main.a") == "mfm:{0192-run}:lease:m.main.a"
    assert keys.event_keys(rid) == (
        b"mfm:{0192-run}:events",
        b"mfm:{0192-run}:guard",
        b"mfm:{0192-run}:facts",
        b"mfm:{0192-run}:batches",
        b"mfm:{0192-run}:meta",
    )
    assert keys.op_index("demo") == b"mfm:runs:op:demo"
    assert keys.phase_index(RunPhase.RUNNING.value) == b"mfm:runs:phase:Running"
    assert keys.label_index("team", "a") == b"mfm:runs:label:team=a"
    assert keys.journal_keys("b") == [
        b"mfm:journal:{b}:entries",
        b"mfm:journal:{b}:meta",
        b"mfm:journal:{b}:batches",
    ]
    assert keys.artifact_cache_key("ab") == "mfm:art:ab"
    docs = (REPO / "docs" / "storage.md").read_text(encoding="utf-8")
    for part in (keys.EVENTS, keys.GUARD, keys.FACTS, keys.BATCHES, keys.META):
        assert f"`mfm:{{rid}}:{part}`" in docs
    distributed = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    for part in (keys.PLAN, keys.LOCK, keys.DIRTY, keys.LOOKED, keys.RESERVED, keys.NOTIFIED):
        assert f":{part}`" in distributed, part
    assert keys.TIMERS_KEY in distributed


def _start(store: RedisEventStore, op: str = "demo") -> RunId:
    rid = RunId(str(uuid.uuid4()))
    event = RunStarted(op_id=OpId(op), manifest_id=SNAP, initial_snapshot_id=SNAP)
    store.append_next(rid, [EventDraft(event=event, ts_millis=1_000)])
    return rid


def _complete(store: RedisEventStore, rid: RunId) -> None:
    event = RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=SNAP)
    store.append_next(rid, [EventDraft(event=event, ts_millis=2_000)])


def test_the_event_store_writes_only_keys_of_the_layout(redis_url: str) -> None:
    store = RedisEventStore.from_url(redis_url)
    try:
        running, done = _start(store), _start(store, "other")
        _complete(store, done)
        store.list_runs()
        written = set(store.client.keys("*"))
        expected = {
            keys.RUN_INDEX_KEY,
            keys.RUN_IDS_KEY,
            keys.INDEX_VERSION_KEY,
            keys.op_index("demo"),
            keys.op_index("other"),
            keys.phase_index(RunPhase.RUNNING.value),
            keys.phase_index(RunPhase.COMPLETED.value),
        }
        for rid in (running, done):
            expected |= set(keys.event_keys(str(rid)))
        assert written <= expected, written - expected
        assert set(running_run_ids(store.client, page=1)) == {str(running)}
    finally:
        store.close()


def test_running_run_ids_reads_a_bare_client(redis_url: str) -> None:
    """The timer poller holds a client, not a store: it gets the running runs the same way."""
    store = RedisEventStore.from_url(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        rids = [_start(store) for _ in range(5)]
        _complete(store, rids[0])
        assert sorted(running_run_ids(client, page=2)) == sorted(str(r) for r in rids[1:])
    finally:
        client.close()
        store.close()
