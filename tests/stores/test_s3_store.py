"""S3ArtifactStore against a real S3 server process: SeaweedFS (`weed mini`), which checks
signatures against one static identity and enforces `If-None-Match: *` itself."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from mfm_dist.artifacts import ArtifactKind, OtherArtifactKind, get_json, put_json
from mfm_dist.canonical import artifact_id_of_bytes
from mfm_dist.errors import (
    Corruption,
    InvalidInput,
    NotFound,
    StorageError,
    StorageUnavailable,
)
from mfm_dist.settings import Settings
from mfm_dist.stores.s3_artifacts import KIND_METADATA, S3ArtifactStore
from mfm_dist.stores.urls import open_artifact_store

if TYPE_CHECKING:
    from support.servers import S3Server

# Fixtures s3_server, s3_artifacts_url, s3_factory, s3_credentials (imported lazily by
# pytest, so the helper module is not imported twice).


def s3_store(url: str) -> S3ArtifactStore:
    """The store at `url`, signed with the S3 credentials of this test's settings (the
    `s3_credentials` fixture puts the test identity in the environment)."""
    return S3ArtifactStore.from_url(url, credentials=Settings.from_env().s3)


def new_bucket_name() -> str:
    return f"mfm-s3-{uuid.uuid4().hex[:16]}"


def _bucket_and_key(store_url: str, artifact_id: str) -> tuple[str, str]:
    parts = urlsplit(store_url)
    prefix = parts.path.strip("/")
    return str(parts.hostname), f"{prefix}/{artifact_id[:2]}/{artifact_id}"


def test_put_get_exists_roundtrip(s3_artifacts_url: str, s3_server: S3Server) -> None:
    store = open_artifact_store(s3_artifacts_url, s3=Settings.from_env().s3)
    assert isinstance(store, S3ArtifactStore)
    data = b"hello artifacts"
    aid = store.put(ArtifactKind.OUTPUT, data)
    assert aid == artifact_id_of_bytes(data)
    assert store.exists(aid)
    assert store.get(aid) == data
    # Same bytes, other kind: same id, the object is not rewritten.
    assert store.put(OtherArtifactKind(value="notes"), data) == aid

    bucket, key = _bucket_and_key(s3_artifacts_url, aid)
    stat = s3_server.client().stat_object(bucket, key)
    assert stat.metadata[KIND_METADATA] == "Output"

    jid = put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, {"b": [1, 2], "a": "x"}, "test")
    assert get_json(store, jid) == {"a": "x", "b": [1, 2]}
    store.close()


def test_missing_artifact_is_not_found(s3_artifacts_url: str) -> None:
    store = s3_store(s3_artifacts_url)
    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(NotFound) as err:
        store.get(missing)
    assert err.value.code == "artifact_not_found"


def test_concurrent_puts_of_same_bytes(s3_artifacts_url: str, s3_server: S3Server) -> None:
    store = s3_store(s3_artifacts_url)
    data = bytes(range(256)) * 64
    with ThreadPoolExecutor(max_workers=32) as pool:
        ids = list(pool.map(lambda _: store.put(ArtifactKind.OUTPUT, data), range(32)))
    assert set(ids) == {artifact_id_of_bytes(data)}
    assert store.get(ids[0]) == data
    bucket, _ = _bucket_and_key(s3_artifacts_url, ids[0])
    objects = list(s3_server.client().list_objects(bucket, recursive=True))
    assert [o.object_name for o in objects] == [_bucket_and_key(s3_artifacts_url, ids[0])[1]]


def test_tampered_object_detected(s3_artifacts_url: str, s3_server: S3Server) -> None:
    store = s3_store(s3_artifacts_url)
    data = b"original bytes"
    aid = store.put(ArtifactKind.OUTPUT, data)
    bucket, key = _bucket_and_key(s3_artifacts_url, aid)
    evil = b"tampered bytes"
    s3_server.client().put_object(bucket, key, io.BytesIO(evil), len(evil))
    with pytest.raises(Corruption) as err:
        store.get(aid)
    assert err.value.code == "artifact_content_address_mismatch"
    # A put of the genuine bytes notices the bad object instead of claiming success.
    with pytest.raises(Corruption):
        store.put(ArtifactKind.OUTPUT, data)


def test_lost_race_with_different_bytes_is_corruption(
    s3_artifacts_url: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create-only PUT loses to a writer whose bytes differ: never silently accepted.
    A small object is put at once (no HEAD first): the rival writes just before our PUT."""
    store = s3_store(s3_artifacts_url)
    data = b"ours"
    aid = artifact_id_of_bytes(data)
    bucket, key = _bucket_and_key(s3_artifacts_url, aid)
    client = store.raw_client()
    real_put = client._put_object
    requests: list[str] = []

    def race_then_put(*args: object, **kwargs: object) -> object:
        requests.append("put")
        other = b"theirs!"
        s3_server.client().put_object(bucket, key, io.BytesIO(other), len(other))
        return real_put(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "_put_object", race_then_put)
    monkeypatch.setattr(store, "_stat", _counting(store._stat, requests))
    with pytest.raises(Corruption) as err:
        store.put(ArtifactKind.OUTPUT, data)
    assert err.value.code == "artifact_content_address_mismatch"
    assert requests == ["put", "head"]  # one conditional PUT, then the check of the winner


def test_lost_race_on_the_head_first_path_is_corruption(
    s3_artifacts_url: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large object is HEADed first; a rival that writes between the HEAD and our PUT
    still makes it `Corruption`."""
    store = S3ArtifactStore.from_url(
        s3_artifacts_url + "&head_first_bytes=16", credentials=Settings.from_env().s3
    )
    data = b"ours, larger than sixteen bytes"
    aid = artifact_id_of_bytes(data)
    bucket, key = _bucket_and_key(s3_artifacts_url, aid)
    real_stat = store._stat

    def stat_then_race(artifact_id: str) -> object | None:
        info = real_stat(artifact_id)
        other = b"theirs, larger than sixteen bytes!"
        s3_server.client().put_object(bucket, key, io.BytesIO(other), len(other))
        return info

    monkeypatch.setattr(store, "_stat", stat_then_race)
    with pytest.raises(Corruption):
        store.put(ArtifactKind.OUTPUT, data)


def test_a_small_put_is_one_request_and_a_repeated_one_is_checked_not_uploaded(
    s3_artifacts_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New small objects cost one PUT (no HEAD); putting them again finds them (412) and
    checks them with a HEAD; a large existing object is never uploaded again."""
    store = s3_store(s3_artifacts_url)
    client = store.raw_client()
    requests: list[str] = []
    monkeypatch.setattr(client, "_put_object", _counting(client._put_object, requests, "put"))
    monkeypatch.setattr(store, "_stat", _counting(store._stat, requests))
    small = b"a small new object"
    store.put(ArtifactKind.OUTPUT, small)
    assert requests == ["put"]
    store.put(ArtifactKind.OUTPUT, small)
    assert requests == ["put", "put", "head"]
    large = b"x" * (64 * 1024)
    requests.clear()
    store.put(ArtifactKind.OUTPUT, large)
    store.put(ArtifactKind.OUTPUT, large)
    assert requests == ["head", "put", "head"]
    assert store.get(artifact_id_of_bytes(large)) == large


def _counting(fn: Any, log: list[str], name: str = "head") -> Any:
    def counted(*args: object, **kwargs: object) -> object:
        log.append(name)
        return fn(*args, **kwargs)

    return counted


def test_create_only_put_under_contention_has_one_winner(
    s3_artifacts_url: str, s3_server: S3Server
) -> None:
    """16 writers race to create one key with different bytes of the same size: the
    server's `If-None-Match: *` lets exactly one in; every other writer sees that the
    stored object is not its own (412 + read-back, or the HEAD short cut's ETag check)."""
    store = s3_store(s3_artifacts_url)
    aid = artifact_id_of_bytes(b"the id all writers claim")
    candidates = [f"candidate {i:02d}".encode() for i in range(16)]
    barrier = threading.Barrier(len(candidates))

    def put(data: bytes) -> str:
        barrier.wait()
        try:
            store.put_raw(aid, ArtifactKind.OUTPUT, data)
        except Corruption:
            return "lost"
        return "won"

    with ThreadPoolExecutor(max_workers=len(candidates)) as pool:
        outcomes = list(pool.map(put, candidates))
    assert outcomes.count("won") == 1, outcomes
    winner = candidates[outcomes.index("won")]
    bucket, key = _bucket_and_key(s3_artifacts_url, aid)
    resp = s3_server.client().get_object(bucket, key)
    try:
        assert resp.read() == winner
    finally:
        resp.close()
        resp.release_conn()


def test_missing_bucket_is_not_found(s3_server: S3Server, s3_credentials: None) -> None:
    store = s3_store(s3_server.url_for(new_bucket_name(), "p"))
    with pytest.raises(NotFound) as err:
        store.put(ArtifactKind.OUTPUT, b"nowhere to go")
    assert err.value.code == "s3_bucket_not_found"
    with pytest.raises(NotFound) as err:
        store.get(artifact_id_of_bytes(b"nowhere to go"))
    assert err.value.code == "s3_bucket_not_found"
    # Never mistaken for an absent artifact (which would make a reader wait or re-put).
    with pytest.raises(NotFound) as err:
        store.exists(artifact_id_of_bytes(b"nowhere to go"))
    assert err.value.code == "s3_bucket_not_found"


def test_create_bucket_option(s3_server: S3Server, s3_credentials: None) -> None:
    bucket = new_bucket_name()
    assert not s3_server.client().bucket_exists(bucket)
    store = s3_store(s3_server.url_for(bucket, "p") + "&create_bucket=1")
    assert s3_server.client().bucket_exists(bucket)
    aid = store.put(ArtifactKind.OUTPUT, b"x")
    assert store.get(aid) == b"x"
    # Opening it again with the option is fine: the bucket already exists.
    again = s3_store(s3_server.url_for(bucket, "p") + "&create_bucket=1")
    assert again.get(aid) == b"x"


def test_wrong_credentials_are_refused(
    s3_artifacts_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server checks signatures: a wrong secret is a permanent (non-retryable) error
    that names no secret, for puts and gets alike; so is an unknown access key."""
    good = s3_store(s3_artifacts_url)
    aid = good.put(ArtifactKind.OUTPUT, b"signed for real")
    for access, secret in (("mfm-test", "not-the-secret"), ("nobody", "whatever-secret")):
        monkeypatch.setenv("MFM_S3_ACCESS_KEY", access)
        monkeypatch.setenv("MFM_S3_SECRET_KEY", secret)
        bad = s3_store(s3_artifacts_url)
        for attempt in (partial(bad.put, ArtifactKind.OUTPUT, b"x"), partial(bad.get, aid)):
            with pytest.raises(StorageError) as err:
                attempt()
            assert err.value.code == "s3_request_failed", err.value
            assert not err.value.retryable
            assert secret not in str(err.value)


def test_anonymous_requests_are_refused(
    s3_artifacts_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    aid = s3_store(s3_artifacts_url).put(ArtifactKind.OUTPUT, b"private")
    for name in ("MFM_S3_ACCESS_KEY", "MFM_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    anonymous = s3_store(s3_artifacts_url)
    with pytest.raises(StorageError) as err:
        anonymous.get(aid)
    assert err.value.code == "s3_request_failed"


def test_credentials_in_url_refused_and_redacted(s3_server: S3Server) -> None:
    url = f"s3://user:hunter2@bucket/p?endpoint={s3_server.endpoint}"
    with pytest.raises(InvalidInput) as err:
        s3_store(url)
    assert "hunter2" not in str(err.value)


def test_server_down_then_back(s3_factory: Callable[[], S3Server]) -> None:
    server = s3_factory()
    bucket = new_bucket_name()
    server.create_bucket(bucket)
    store = s3_store(server.url_for(bucket, "a"))
    aid = store.put(ArtifactKind.OUTPUT, b"before")

    server.stop()
    with pytest.raises(StorageUnavailable) as err:
        store.put(ArtifactKind.OUTPUT, b"while down")
    assert err.value.retryable
    with pytest.raises(StorageUnavailable):
        store.get(aid)

    server.start()  # the same data dir: what was stored before the outage is still there
    assert store.get(aid) == b"before"
    aid2 = store.put(ArtifactKind.OUTPUT, b"after")
    assert store.get(aid2) == b"after"


def test_server_killed_then_back_keeps_acknowledged_puts(
    s3_factory: Callable[[], S3Server],
) -> None:
    """SIGKILL (no graceful flush): every put the server acknowledged is readable after a
    restart on the same data dir."""
    server = s3_factory()
    bucket = new_bucket_name()
    server.create_bucket(bucket)
    store = s3_store(server.url_for(bucket, "a"))
    blobs = [f"acknowledged {i}".encode() * 50 for i in range(20)]
    ids = [store.put(ArtifactKind.OUTPUT, b) for b in blobs]
    server.stop(kill=True)
    server.start()
    assert [store.get(i) for i in ids] == blobs
