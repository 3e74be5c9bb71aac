"""Snapshots stored as links to their base (docs/storage.md#snapshot-links): the encoding
they are hashed from, the storage rule and its bound, what every reader sees, and how a
broken or missing link is reported."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import rfc8785
from click.testing import CliRunner

from mfm_dist import FnState, RunConfig
from mfm_dist.artifacts import ArtifactKind, ArtifactStore
from mfm_dist.canonical import JsonValue, artifact_id_of_bytes, canonical_bytes
from mfm_dist.cli.main import cli
from mfm_dist.context import StagedContext
from mfm_dist.deltas import Delta, compute_delta
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.snapshot_encoding import EncodedSnapshot
from mfm_dist.engine.snapshot_links import is_link_key, link_key
from mfm_dist.engine.snapshots import FULL, SnapshotStore, read_artifact
from mfm_dist.errors import MfmError, StorageError
from mfm_dist.ids import RunId
from mfm_dist.lookup import resolve_artifact_id
from mfm_dist.operations import OperationRegistry
from mfm_dist.replay_check import replay_run
from mfm_dist.settings import Settings
from mfm_dist.stores import InMemoryArtifactStore
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.s3_artifacts import S3ArtifactStore
from mfm_dist.stores.sqlite import SqliteEventStore
from mfm_dist.verify import verify_run
from support.engine_helpers import GraphOp, Harness, registry_with
from support.ui_helpers import dashboard_for

# -- the member encoding is exactly RFC 8785 ------------------------------------------------------

KEYS = ["a", "b", "item_0001", "item_0002", "z", "é", "ﬁ", "日本", "\u2028", "A", "key with space"]


def _value(rng: random.Random, depth: int = 0) -> JsonValue:
    pick = rng.randrange(7 if depth < 3 else 4)
    if pick == 0:
        return rng.randrange(-(2**53) + 1, 2**53)
    if pick == 1:
        return rng.choice(["", "x", "é\n\t\"\\", "\U0001f600", "line\u2028sep"])
    if pick == 2:
        return rng.choice([True, False, None])
    if pick == 3:
        return rng.randrange(100)
    if pick == 4:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    # nested objects may use keys beyond U+FFFF (RFC 8785 sorts those by UTF-16 units)
    keys = [*KEYS, "\U0001f600", "\U0001f600a", "\uffff"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _changes(rng: random.Random, content: dict[str, JsonValue]) -> Delta:
    names = [rng.choice(KEYS) + str(rng.randrange(30)) for _ in range(rng.randrange(4))]
    writes = {name: _value(rng) for name in names}
    deletes = frozenset(k for k in content if rng.random() < 0.2)
    return Delta(writes=writes, deletes=deletes)


def test_member_encoding_is_rfc8785_through_random_changes() -> None:
    rng = random.Random(8785)
    for _ in range(200):
        content: dict[str, JsonValue] = {
            rng.choice(KEYS) + str(rng.randrange(30)): _value(rng) for _ in range(rng.randrange(8))
        }
        encoded = EncodedSnapshot.of(content)
        assert encoded is not None
        for _ in range(10):
            assert encoded.to_bytes() == rfc8785.dumps(content) == canonical_bytes(content)
            assert encoded.size == len(encoded.to_bytes())
            assert encoded.digest() == hashlib.sha256(encoded.to_bytes()).hexdigest()
            delta = _changes(rng, content)
            derived = encoded.derive(delta.writes, delta.deletes)
            assert derived is not None
            delta.apply_to(content)
            encoded = derived


@pytest.mark.parametrize("seed", range(4))
def test_hash_marks_give_the_hash_of_the_whole_bytes(seed: int) -> None:
    """Many members (several hash blocks), changes anywhere: the digest derived from the
    base's hash marks is always the SHA-256 of the full bytes."""
    rng = random.Random(seed)
    content: dict[str, JsonValue] = {f"k{i:05d}": i for i in range(0, 3000, 3)}
    encoded = EncodedSnapshot.of(content)
    assert encoded is not None
    for step in range(60):
        encoded.digest()  # hashed or not, a base's marks must not leak into the wrong place
        if step % 7 == 0:  # a bulk change
            writes: dict[str, JsonValue] = {
                f"k{rng.randrange(3000):05d}": step for _ in range(rng.randrange(200, 400))
            }
        else:
            writes = {f"k{rng.randrange(3200):05d}": [step] for _ in range(rng.randrange(3))}
        deletes = frozenset(k for k in rng.sample(sorted(content), rng.randrange(4)))
        derived = encoded.derive(writes, deletes)
        assert derived is not None
        Delta(writes=writes, deletes=deletes).apply_to(content)
        encoded = derived
        assert encoded.digest() == artifact_id_of_bytes(canonical_bytes(content))
        if step % 10 == 0:  # shrink below a few block boundaries as well
            gone = frozenset(sorted(content)[len(content) // 2 :])
            shrunk = encoded.derive({}, gone)
            assert shrunk is not None
            for key in gone:
                del content[key]
            encoded = shrunk
            assert encoded.digest() == artifact_id_of_bytes(canonical_bytes(content))


def test_bulk_changes_rebuild_the_member_list() -> None:
    content = {f"k{i:05d}": i for i in range(1000)}
    encoded = EncodedSnapshot.of(content)
    assert encoded is not None
    writes = {f"k{i:05d}": -i for i in range(0, 2000, 3)}
    deletes = frozenset(f"k{i:05d}" for i in range(1, 1000, 3))
    derived = encoded.derive(writes, deletes)
    assert derived is not None
    Delta(writes=writes, deletes=deletes).apply_to(content)
    assert derived.to_bytes() == canonical_bytes(content)


def test_a_top_level_key_beyond_the_bmp_falls_back_to_a_whole_encoding() -> None:
    assert EncodedSnapshot.of({"\U0001f600": 1}) is None
    encoded = EncodedSnapshot.of({"a": 1})
    assert encoded is not None and encoded.derive({"\U0001f600": 1}, frozenset()) is None
    # The store still writes the exact canonical bytes (RFC 8785 orders this key by UTF-16).
    store = SnapshotStore(InMemoryArtifactStore())
    base = {"\uffff": 0, "a": 1}
    base_id = store.save(base)
    content = {**base, "\U0001f600": 2}
    prepared = store.prepare(base_id, base, compute_delta(base, content), content)
    assert prepared.data == rfc8785.dumps(content)


def test_the_staged_context_delta_is_the_diff_of_its_merge() -> None:
    rng = random.Random(7)
    for _ in range(300):
        base: dict[str, JsonValue] = {k: _value(rng) for k in rng.sample(KEYS, 5)}
        ctx = StagedContext(base)
        for _ in range(rng.randrange(8)):
            key = rng.choice(KEYS)
            if rng.random() < 0.3:
                ctx.delete(key)
            elif rng.random() < 0.3 and key in base:
                ctx.set(key, orjson.loads(orjson.dumps(base[key])))  # same value, new object
            else:
                ctx.set(key, _value(rng))
        assert ctx.delta() == compute_delta(base, ctx.merged())


def test_compute_delta_tells_true_from_one_even_for_shared_objects() -> None:
    shared = {"v": True}
    assert compute_delta({"a": shared, "b": 1}, {"a": shared, "b": True}).writes == {"b": True}


# -- stores ---------------------------------------------------------------------------------------


@dataclass
class Backend:
    store: ArtifactStore
    tamper: Callable[[str, bytes], None]
    delete: Callable[[str], object]


def _memory(request: pytest.FixtureRequest, tmp: Path) -> Backend:
    store = InMemoryArtifactStore()
    return Backend(store, store.tamper, lambda key: store._blobs.pop(key))


def _files(request: pytest.FixtureRequest, tmp: Path) -> Backend:
    store = FileArtifactStore(tmp / "artifacts")

    def tamper(key: str, data: bytes) -> None:
        path = store.object_path(key)
        os.chmod(path, 0o644)
        path.write_bytes(data)

    return Backend(store, tamper, lambda key: store.object_path(key).unlink())


def _s3(request: pytest.FixtureRequest, tmp: Path) -> Backend:
    url = request.getfixturevalue("s3_artifacts_url")
    store = S3ArtifactStore.from_url(url, credentials=Settings.from_env().s3)
    client = store.raw_client()

    def tamper(key: str, data: bytes) -> None:
        client.put_object(store.bucket, store.object_key(key), io.BytesIO(data), len(data))

    def delete(key: str) -> None:
        client.remove_object(store.bucket, store.object_key(key))

    return Backend(store, tamper, delete)


BACKENDS = {"memory": _memory, "file": _files, "s3": _s3}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = BACKENDS[request.param](request, tmp_path)
    yield made
    made.store.close()


class Crash(StorageError):
    def __init__(self) -> None:
        super().__init__("test_crash", "the store went away")


def grow_op(states: int = 60, crash_at: int | None = None) -> GraphOp:
    """A chain whose states each add a key, rewrite a running total and, every fifth
    state, remove the key four states back: sets, overwrites and unsets. State `crash_at`
    fails its first attempt with a storage fault (the engine stops, the attempt stays open)."""
    crashed: list[int] = []

    def step(i: int) -> FnState:
        def handle(ctx: StagedContext, io: Any, rec: Any) -> None:
            if i == crash_at and not crashed:
                crashed.append(i)
                raise Crash()
            ctx.set(f"k{i:04d}", {"i": i, "text": "x" * 20})
            ctx.set("total", int(ctx.get("total", 0)) + i)
            if i % 5 == 4:
                ctx.delete(f"k{i - 4:04d}")

        return FnState(handle)

    names = [f"s{i:04d}" for i in range(states)]
    return GraphOp(
        "grow",
        {name: step(i) for i, name in enumerate(names)},
        list(itertools.pairwise(names)),
    )


def run_grow(
    artifacts: ArtifactStore, *, links: bool = True, states: int = 60
) -> tuple[Harness, RunId, SnapshotStore]:
    h = Harness(registry_with(grow_op(states)), artifacts=artifacts)
    engine = h.engine()
    engine.snapshots.links = links
    from mfm_dist import prepare_run, store_manifest

    prepared = prepare_run(h.registry, "grow", {}, RunConfig())
    store_manifest(artifacts, prepared.manifest)
    result = engine.start(
        plan=prepared.plan,
        run_config=RunConfig(),
        manifest=prepared.manifest,
        manifest_id=prepared.manifest_id,
        initial_context=prepared.initial_context,
    )
    assert result.phase.value == "Completed", result
    return h, result.run_id, engine.snapshots


def snapshot_ids(h: Harness, run_id: RunId) -> list[tuple[str, str]]:
    history = RunHistory.load(h.events, run_id)
    out = []
    for record in history.states.values():
        assert record.last is not None and record.last.snapshot_id is not None
        out.append((record.last.base_snapshot_id, record.last.snapshot_id))
    return out


def linked(h: Harness, run_id: RunId) -> list[str]:
    """The run's snapshots that are stored only as links."""
    store = h.artifacts
    return [
        sid
        for _, sid in snapshot_ids(h, run_id)
        if not store.exists(sid) and store.exists(link_key(sid))
    ]


def test_ids_are_the_full_canonical_hashes_and_equal_with_links_off(backend: Backend) -> None:
    h, rid, snapshots = run_grow(backend.store)
    plain_h, plain_rid, _ = run_grow(InMemoryArtifactStore(), links=False)
    ids = snapshot_ids(h, rid)
    assert ids == snapshot_ids(plain_h, plain_rid)  # every base and snapshot id, in order
    final = RunHistory.load(h.events, rid).completed
    assert final is not None and final.final_snapshot_id is not None
    assert str(final.final_snapshot_id) == ids[-1][1]
    assert snapshots.stats.links > 40 and linked(h, rid)
    # A reader that has seen nothing rebuilds every snapshot, bytes and all.
    cold = SnapshotStore(backend.store)
    for _, sid in ids:
        data = cold.load_bytes(sid)
        assert hashlib.sha256(data).hexdigest() == sid
        assert SnapshotStore(plain_h.artifacts).load(sid) == cold.load(sid)
        assert orjson.loads(data) == cold.load(sid)
    # The final snapshot is stored in full: one plain, verified read.
    assert backend.store.get(str(final.final_snapshot_id)) == cold.load_bytes(ids[-1][1])


def test_stored_bytes_stay_within_the_bound_of_the_docs() -> None:
    for states in (30, 200):
        artifacts = InMemoryArtifactStore()
        h, rid, snapshots = run_grow(artifacts, states=states)
        history = RunHistory.load(h.events, rid)
        initial = str(history.started.initial_snapshot_id)
        assert history.completed is not None
        final = str(history.completed.final_snapshot_id)
        manifest = str(history.started.manifest_id)
        stored = sum(len(data) for key, (_, data) in artifacts._blobs.items() if key != manifest)
        s = snapshots.stats
        assert s.deltas == states  # every state's would-be link was counted
        bound = 2 * s.delta_bytes + len(artifacts.get(initial)) + len(artifacts.get(final))
        assert stored <= bound, (stored, bound, s)
        assert stored == len(artifacts.get(initial)) + s.link_bytes + s.full_bytes
        if states == 200:
            # Links off: the whole context at every state, quadratic in the run's length.
            _, _, full = run_grow(InMemoryArtifactStore(), links=False, states=states)
            assert full.stats.full_bytes > 5 * stored


def test_the_fan_out_demo_stays_within_three_times_its_deltas_plus_the_final() -> None:
    h = Harness(OperationRegistry.default())
    engine = h.engine()
    from mfm_dist import prepare_run, store_manifest

    prepared = prepare_run(h.registry, "fanout_demo", {"items": 400}, RunConfig())
    store_manifest(h.artifacts, prepared.manifest)
    result = engine.start(
        plan=prepared.plan,
        run_config=RunConfig(),
        manifest=prepared.manifest,
        manifest_id=prepared.manifest_id,
        initial_context=prepared.initial_context,
    )
    assert result.final_snapshot_id is not None
    final = len(h.artifacts.get(result.final_snapshot_id))
    s = engine.snapshots.stats
    assert s.link_bytes + s.full_bytes <= 3 * s.delta_bytes + final
    assert s.links > 350  # most states stored as links


def test_a_chain_is_written_in_full_when_its_links_outgrow_the_snapshot() -> None:
    store = SnapshotStore(InMemoryArtifactStore())
    content: dict[str, JsonValue] = {"big": "x" * 2000}
    sid = store.save(content)
    depths = []
    for i in range(200):
        new = {**content, f"k{i:03d}": "y" * 40}
        sid = store.save_derived(sid, content, compute_delta(content, new), new)
        content = new
        stored = store._stored_as(sid)
        assert stored is not None
        depths.append(stored.depth)
        assert stored.chain <= len(canonical_bytes(content))  # the rule, at every state
    assert 0 in depths[10:]  # a full snapshot restarted the chain...
    assert max(depths) > 10  # ...after a run of links


def test_a_second_branch_off_an_exhausted_base_writes_that_base_in_full() -> None:
    artifacts = InMemoryArtifactStore()
    store = SnapshotStore(artifacts)
    base: dict[str, JsonValue] = {"big": "x" * 1000}
    sid = store.save(base)
    while True:  # links until the chain is nearly as large as the snapshot
        new = {**base, f"k{len(base):03d}": "y" * 100}
        nxt = store.save_derived(sid, base, compute_delta(base, new), new)
        stored = store._stored_as(nxt)
        assert stored is not None
        if stored.depth == 0:
            break
        sid, base = nxt, new
    assert not artifacts.exists(sid) and store._stored_as(sid) != FULL
    branches = []
    for name in ("left", "right", "third"):
        child = {**base, name: "z" * 400}
        branches.append(store.save_derived(sid, base, compute_delta(base, child), child))
    assert artifacts.exists(sid)  # the fork point, once, in full
    assert not artifacts.exists(branches[1]) and not artifacts.exists(branches[2])
    link = orjson.loads(artifacts.get_keyed(link_key(branches[2])))
    assert link["base"] == sid and link["depth"] == 1 and link["chain"] == 0


# -- what a link looks like -----------------------------------------------------------------------


def test_a_link_is_a_canonical_record_under_a_key_derived_from_the_snapshot_id() -> None:
    artifacts = InMemoryArtifactStore()
    store = SnapshotStore(artifacts)
    base: dict[str, JsonValue] = {"gone": 1, "kept": "k" * 400}
    base_id = store.save(base)
    new: dict[str, JsonValue] = {"kept": "k" * 400, "new": [1, "two"]}
    sid = store.save_derived(base_id, base, compute_delta(base, new), new)
    key = link_key(sid)
    assert key[:48] == sid[:48] and is_link_key(key) and not is_link_key(sid)
    data = artifacts.get_keyed(key)
    assert data == canonical_bytes(orjson.loads(data))
    assert orjson.loads(data) == {
        "base": base_id,
        "chain": 0,
        "depth": 1,
        "link": 1,
        "set": {"new": [1, "two"]},
        "snapshot": sid,
        "unset": ["gone"],
    }
    assert "snapshot_link" in artifacts._blobs[key][0]  # the kind it was stored with
    assert not artifacts.exists(sid)
    assert artifact_id_of_bytes(SnapshotStore(artifacts).load_bytes(sid)) == sid
    assert read_artifact(artifacts, sid) == canonical_bytes(new)
    assert resolve_artifact_id(artifacts, sid[:12]) == sid


# -- broken links are reported with the artifact codes ---------------------------------------------


def _chain(backend: Backend) -> tuple[Harness, RunId, list[str]]:
    h, rid, _ = run_grow(backend.store, states=30)
    links = linked(h, rid)
    assert len(links) > 5
    return h, rid, links


def _load_error(store: ArtifactStore, sid: str) -> MfmError:
    with pytest.raises(MfmError) as info:
        SnapshotStore(store).load(sid)
    return info.value


def _verify_codes(h: Harness, rid: RunId) -> set[str]:
    report = verify_run(h.events, h.artifacts, h.registry, rid)
    assert not report.ok
    return {v.code for v in report.violations}


def test_a_link_that_rebuilds_other_content_is_a_hash_mismatch(backend: Backend) -> None:
    h, rid, links = _chain(backend)
    victim = links[3]
    link = orjson.loads(backend.store.get_keyed(link_key(victim)))
    link["set"] = {**link["set"], "total": -1}
    backend.tamper(link_key(victim), canonical_bytes(link))
    err = _load_error(backend.store, victim)
    assert err.code == "artifact_content_address_mismatch" and isinstance(err, StorageError)
    assert err.info.category.value == "Storage" and victim in err.info.message
    assert "artifact_content_address_mismatch" in _verify_codes(h, rid)


@pytest.mark.parametrize(
    ("corrupt", "code"),
    [
        (lambda data: data + b" ", "artifact_not_canonical"),
        (lambda data: data[:-1], "artifact_json_decode_failed"),
        (
            lambda data: data.replace(b'"set":{', b'"set":{"password":"hunter2",', 1),
            "secrets_detected",
        ),
        (lambda data: canonical_bytes({"something": "else"}), "artifact_content_address_mismatch"),
    ],
)
def test_a_corrupt_link_record_is_reported_with_the_readers_codes(
    corrupt: Callable[[bytes], bytes], code: str
) -> None:
    backend = _memory(None, Path())  # type: ignore[arg-type]
    h, rid, links = _chain(backend)
    victim = links[-1]
    backend.tamper(link_key(victim), corrupt(backend.store.get_keyed(link_key(victim))))
    assert _load_error(backend.store, victim).code == code
    assert code in _verify_codes(h, rid)


def test_a_link_whose_depth_does_not_continue_its_chain_is_refused() -> None:
    """Depths fall by one per link, so a walk always ends; a record that breaks this is
    refused (its content may still rebuild from a base already in memory: the hash
    vouches for that)."""
    backend = _memory(None, Path())  # type: ignore[arg-type]
    _, _, links = _chain(backend)
    victim = links[-1]
    link = orjson.loads(backend.store.get_keyed(link_key(victim)))
    assert link["depth"] > 1
    link["depth"] += 5
    backend.tamper(link_key(victim), canonical_bytes(link))
    assert _load_error(backend.store, victim).code == "artifact_content_address_mismatch"


def test_a_link_naming_another_snapshot_is_refused(backend: Backend) -> None:
    _h, _rid, links = _chain(backend)
    other = backend.store.get_keyed(link_key(links[2]))
    backend.tamper(link_key(links[4]), other)
    assert _load_error(backend.store, links[4]).code == "artifact_content_address_mismatch"


def test_a_missing_base_is_artifact_not_found_naming_it(backend: Backend) -> None:
    h, rid, links = _chain(backend)
    # The full snapshot the last links' chain starts from.
    victim = links[-1]
    base = orjson.loads(backend.store.get_keyed(link_key(victim)))
    while not backend.store.exists(base["base"]):
        base = orjson.loads(backend.store.get_keyed(link_key(base["base"])))
    start = base["base"]
    backend.delete(start)
    err = _load_error(backend.store, victim)
    assert err.code == "artifact_not_found"
    assert err.info.details == {"artifact_id": start, "snapshot_id": victim}
    assert "artifact_not_found" in _verify_codes(h, rid)


def test_a_missing_link_is_artifact_not_found(backend: Backend) -> None:
    h, rid, links = _chain(backend)
    backend.delete(link_key(links[-1]))
    err = _load_error(backend.store, links[-1])
    assert err.code == "artifact_not_found" and links[-1] in err.info.message
    codes = _verify_codes(h, rid)
    assert codes == {"artifact_not_found"}


def test_a_broken_link_is_bypassed_when_the_snapshot_is_also_stored_in_full() -> None:
    backend = _memory(None, Path())  # type: ignore[arg-type]
    _h, _rid, links = _chain(backend)
    victim = links[-1]
    good = SnapshotStore(backend.store).load_bytes(victim)
    backend.store.put(ArtifactKind.CONTEXT_SNAPSHOT, good)
    backend.tamper(link_key(victim), b"garbage")
    assert SnapshotStore(backend.store).load_bytes(victim) == good


# -- every reader sees full snapshots ------------------------------------------------------------


def _mfm(home: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)


def test_the_cli_shows_linked_snapshots_in_full(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = _mfm(home, "run", "fanout_demo", "--input", '{"items": 120}', "--json")
    assert done.exit_code == 0, done.output
    rid = orjson.loads(done.stdout.splitlines()[-1])["run_id"]
    events = SqliteEventStore(home / "events.sqlite3")
    artifacts = FileArtifactStore(home / "artifacts")
    history = RunHistory.load(events, RunId(rid))
    record = history.states["fanout_demo.main.item_0100"]
    assert record.snapshot_id is not None
    sid = record.snapshot_id
    assert not artifacts.exists(sid) and artifacts.exists(link_key(sid))
    full = SnapshotStore(artifacts).load_bytes(sid)
    assert _mfm(home, "artifact", sid).stdout_bytes == full
    assert _mfm(home, "artifact", sid[:12]).stdout_bytes == full
    shown = _mfm(home, "context", rid, "--state", "item_0100")
    assert shown.exit_code == 0 and orjson.loads(shown.stdout) == orjson.loads(full)
    assert _mfm(home, "verify", rid).exit_code == 0
    replayed = _mfm(home, "replay", rid)
    assert replayed.exit_code == 0, replayed.output
    # The dashboard: the artifact endpoint (full id and prefix) and the state's delta.
    from mfm_dist.ui.app import create_app

    with warnings.catch_warnings():  # "install httpx2": the test client works with httpx
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    client = TestClient(create_app(dashboard_for(home=str(home))))
    for shown_id in (sid, sid[:12]):
        response = client.get(f"/api/artifacts/{shown_id}")
        assert response.status_code == 200 and response.content == full
    detail = client.get(f"/api/runs/{rid}/states/item_0100").json()
    assert detail["delta"]["snapshot_id"] == sid
    assert list(detail["delta"]["writes"]) == ["item_0100"]
    events.close()


def test_replay_and_verify_read_links(backend: Backend) -> None:
    h, rid, _ = run_grow(backend.store)
    assert verify_run(h.events, h.artifacts, h.registry, rid).ok
    report = replay_run(h.events, h.artifacts, h.registry, rid)
    assert report.ok and len(report.states) == 60


def test_resume_on_a_cold_engine_rebuilds_its_base_and_ends_with_the_same_ids(
    backend: Backend,
) -> None:
    h = Harness(registry_with(grow_op(crash_at=37)), artifacts=backend.store)
    with pytest.raises(Crash):
        h.run("grow", {})
    (summary,) = h.events.list_runs(10)
    result = h.engine().resume(summary.run_id)  # a new engine: nothing cached
    assert result.phase.value == "Completed"
    plain, plain_rid, _ = run_grow(InMemoryArtifactStore(), links=False)
    expected = RunHistory.load(plain.events, plain_rid).completed
    assert expected is not None and result.final_snapshot_id == expected.final_snapshot_id
    assert verify_run(h.events, h.artifacts, h.registry, summary.run_id).ok


def test_prefetch_then_ordered_loads_read_each_record_once() -> None:
    counting = CountingStore()
    h, rid, _ = run_grow(counting, states=50)
    ids = [sid for _, sid in snapshot_ids(h, rid)]
    counting.reads.clear()
    store = SnapshotStore(counting)
    store.prefetch(ids, lambda fetch, todo: list(map(fetch, todo)))
    for sid in ids:
        store.load(sid)
    assert max(counting.reads.values()) == 1  # nothing read twice, even the chain's start


class CountingStore(InMemoryArtifactStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def get_raw(self, artifact_id: Any) -> bytes:
        self.reads[str(artifact_id)] = self.reads.get(str(artifact_id), 0) + 1
        return super().get_raw(artifact_id)


# -- the form asked for first: one request per snapshot -------------------------------------------


class MissCountingStore(InMemoryArtifactStore):
    """Counts every request, found or not (a miss is a round trip on a durable store)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def get_raw(self, artifact_id: Any) -> bytes:
        self.requests += 1
        return super().get_raw(artifact_id)


def test_a_store_of_full_snapshots_is_read_with_one_request_each() -> None:
    """A snapshot is stored in full or as a link; asking for the wrong form first costs a
    request that finds nothing. Once most reads found full copies, those are asked for
    first (verify of a fan-out run read 2 objects per snapshot, one of them a 404)."""
    counting = MissCountingStore()
    h, rid, _ = run_grow(counting, links=False, states=40)
    ids = [sid for _, sid in snapshot_ids(h, rid)]
    counting.requests = 0
    store = SnapshotStore(counting)
    store.prefetch(ids, lambda fetch, todo: list(map(fetch, todo)))
    assert counting.requests <= len(ids) + 1  # the first asks for a link, finds none
    for sid in ids:
        store.load(sid)
    assert counting.requests <= len(ids) + 1
    counting.requests = 0
    cold = SnapshotStore(counting)
    for sid in ids:
        cold.load(sid)  # one at a time, the same way
    assert counting.requests <= len(ids) + 1


def test_a_store_of_links_keeps_asking_for_links_first() -> None:
    counting = MissCountingStore()
    h, rid, _ = run_grow(counting, states=40)
    links = linked(h, rid)
    assert len(links) > 10
    counting.requests = 0
    store = SnapshotStore(counting)
    for sid in links:
        store.load(sid)
    # A link record each and the chains' full starts (34 for 24 links here); asking for
    # full copies first would add a miss per link (58).
    assert counting.requests < 1.5 * len(links)


def _outcome(store: SnapshotStore, sid: str) -> tuple[str, str]:
    try:
        return ("ok", store.load_bytes(sid).decode())
    except MfmError as exc:
        return (exc.code, exc.info.message)


@pytest.mark.parametrize("link", ["ok", "corrupt", "absent"])
@pytest.mark.parametrize("full", ["ok", "corrupt", "missing"])
def test_asking_for_the_full_copy_first_gives_the_same_outcome(link: str, full: str) -> None:
    """Every combination of a snapshot's link record and full copy (each good, broken or
    absent): a store that asks for the full copy first returns what a store asking for
    the link first returns — the content, or the same error."""
    backend = _memory(None, Path())  # type: ignore[arg-type]
    _h, _rid, links = _chain(backend)
    victim = links[-1]
    good = SnapshotStore(backend.store).load_bytes(victim)
    record = orjson.loads(backend.store.get_keyed(link_key(victim)))
    start = record
    while not backend.store.exists(start["base"]):
        start = orjson.loads(backend.store.get_keyed(link_key(start["base"])))
    if full != "missing":
        backend.store.put(ArtifactKind.CONTEXT_SNAPSHOT, good)
    if full == "corrupt":
        backend.tamper(victim, good + b" ")
    if link == "corrupt":
        backend.tamper(link_key(victim), b"garbage")
    elif link == "absent":
        backend.delete(link_key(victim))

    links_first = SnapshotStore(backend.store)
    full_first = SnapshotStore(backend.store)
    full_first.load(start["base"])  # a full copy found: from now on full copies go first
    assert full_first._full_first() and not links_first._full_first()
    expected = _outcome(links_first, victim)
    assert _outcome(full_first, victim) == expected
    if full == "ok" or link == "ok":
        assert expected == ("ok", good.decode())
