"""Snapshot links on the cluster path (docs/storage.md#snapshot-links): attempt workers
that start from a base stored as a link rebuild it through their `SnapshotStore` — cold
or warm, with the Redis write-through cache in front of the store or not, on files and on
S3 — and a run ends with the ids the embedded engine gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from mfm_dist.canonical import JsonValue, canonical_bytes
from mfm_dist.config import RunConfig
from mfm_dist.deltas import compute_delta
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.snapshot_links import link_key
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import MfmError
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.verify import verify_run
from support.engine_helpers import Harness as EngineHarness
from support.worker_harness import FakeDispatcher, Harness, completed_status
from workers.coordinator import Coordinator
from workers.outcomes import AttemptOutcome, StepOutcome
from workers.runtime import RedisCachedArtifacts, Runtime, redis_client

ITEMS = 60


def embedded_final(items: int) -> str:
    h = EngineHarness(OperationRegistry.default())
    result = h.run("fanout_demo", {"items": items}, RunConfig())
    assert result.final_snapshot_id is not None
    return str(result.final_snapshot_id)


@pytest.fixture(params=["file", "s3+redis-cache"])
def cluster(
    request: pytest.FixtureRequest,
    env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    if request.param != "file":
        monkeypatch.setenv("MFM_ARTIFACTS_URL", request.getfixturevalue("s3_artifacts_url"))
        monkeypatch.setenv("MFM_ARTIFACT_CACHE_TTL_S", "60")
    from workers import tasks

    rt = Runtime.from_env()
    dispatcher = FakeDispatcher()
    coordinator = Coordinator(rt, dispatcher)
    monkeypatch.setattr(tasks, "send_advance", dispatcher.send_advance)
    yield Harness(rt, dispatcher, coordinator)
    coordinator.close()
    rt.close()


def test_workers_rebuild_linked_bases_and_end_with_the_embedded_ids(cluster: Harness) -> None:
    h = cluster
    assert isinstance(h.rt.artifacts, RedisCachedArtifacts) == (
        "s3" in (h.rt.settings.artifacts_url or "")
    )
    rid = h.submit("fanout_demo", {"items": ITEMS})  # sequential: one growing context
    warm = Runtime.from_env()  # a second worker process that keeps its caches
    cold_starts_from_links = 0
    try:
        for n in range(ITEMS + 5):
            if h.coordinator.advance(rid) == StepOutcome.FINISHED:
                break
            for task in h.dispatcher.take():
                if n % 7 == 3:
                    # A worker that has seen nothing: its base is a link, rebuilt from the
                    # store (or the Redis cache) through the chain.
                    rt = Runtime.from_env()
                    linked = not rt.artifacts.exists(task.base_snapshot_id)
                    if linked:
                        assert rt.artifacts.exists(link_key(task.base_snapshot_id))
                        cold_starts_from_links += 1
                    worker = Harness(rt, FakeDispatcher(), h.coordinator)
                    try:
                        assert worker.run(task) == AttemptOutcome.COMPLETED
                    finally:
                        rt.close()
                else:
                    worker = h if n % 2 else Harness(warm, FakeDispatcher(), h.coordinator)
                    assert worker.run(task) == AttemptOutcome.COMPLETED
        else:
            raise AssertionError("the run did not finish")
    finally:
        warm.close()
    assert completed_status(h, rid) == "Completed"
    assert cold_starts_from_links >= 5
    history = RunHistory.load(h.rt.events, RunId(rid))
    assert history.completed is not None
    final = str(history.completed.final_snapshot_id)
    assert final == embedded_final(ITEMS)
    assert h.rt.artifacts.exists(final)  # the final snapshot is stored in full
    # The stored form: most snapshots are links.
    snapshots = [r.snapshot_id for r in history.states.values() if r.snapshot_id is not None]
    links = [s for s in snapshots if not h.rt.artifacts.exists(s)]
    assert len(links) > ITEMS // 2
    # A coordinator that never saw the run rebuilds it from the log and the links.
    fresh = Runtime.from_env()
    try:
        assert verify_run(fresh.events, fresh.artifacts, fresh.registry, rid).ok
    finally:
        fresh.close()


def test_the_redis_cache_serves_link_records_and_their_hash_check_still_holds(
    redis_url: str,
    tmp_path: Path,
) -> None:
    client = redis_client(redis_url)
    inner = FileArtifactStore(tmp_path / "art")
    cached = RedisCachedArtifacts(inner, client, ttl_s=60)
    store = SnapshotStore(cached)
    base: dict[str, JsonValue] = {"k": "v" * 500}
    base_id = store.save(base)
    new: dict[str, JsonValue] = {**base, "n": 1}
    sid = store.save_derived(base_id, base, compute_delta(base, new), new)
    key = link_key(sid)
    assert inner.exists(key) and not inner.exists(sid)
    inner.object_path(key).unlink()  # only the cache holds the link now
    assert SnapshotStore(cached).load(sid) == new
    raw = client.get(f"mfm:art:{key}")
    assert isinstance(raw, bytes)
    link = orjson.loads(raw)
    link["set"] = {"n": 2}
    client.set(f"mfm:art:{key}", canonical_bytes(link))  # a poisoned cache entry
    with pytest.raises(MfmError) as info:
        SnapshotStore(cached).load(sid)
    assert info.value.code == "artifact_content_address_mismatch"
    client.close()


class CountingReads(FileArtifactStore):
    """A file store that counts durable reads (hits and 404s alike)."""

    reads = 0

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        self.reads += 1
        return super().get_raw(artifact_id)


def test_a_join_reads_its_members_snapshots_from_the_cache_without_a_durable_request(
    redis_url: str,
    tmp_path: Path,
) -> None:
    """What a join does with 40 member snapshots (full ones, and links to a shared base):
    one `MGET` per chunk, no S3 read and no 404 for the link of a full snapshot. A poisoned
    cache entry is not used: the durable copy is read instead."""
    client = redis_client(redis_url)
    inner = CountingReads(tmp_path / "art")
    writer = SnapshotStore(RedisCachedArtifacts(inner, client, ttl_s=60))
    base: dict[str, JsonValue] = {"k": "v" * 2000}
    base_id = writer.save(base)
    members: dict[str, dict[str, JsonValue]] = {}
    for i in range(20):
        small: dict[str, JsonValue] = {"item": i}
        members[str(writer.save(small))] = small
        grown: dict[str, JsonValue] = {**base, "item": i}
        members[str(writer.save_derived(base_id, base, compute_delta(base, grown), grown))] = grown
    assert sum(1 for s in members if inner.exists(link_key(s))) == 20

    inner.reads = 0
    reader = SnapshotStore(RedisCachedArtifacts(inner, client, ttl_s=60))
    reader.prefetch(members, lambda fn, ids: list(map(fn, ids)))
    assert {s: reader.load(s) for s in members} == members
    assert inner.reads == 0

    poisoned = next(s for s in members if not inner.exists(link_key(s)))
    client.set(f"mfm:art:{poisoned}", canonical_bytes({"item": -1}))
    cold = SnapshotStore(RedisCachedArtifacts(inner, client, ttl_s=60))
    assert cold.load(poisoned) == members[poisoned]
    assert inner.reads >= 1
    client.close()
