"""The artifact backends' one public seam (docs/storage.md#the-raw-seam): a backend implements
`put_raw`/`get_raw`/`exists`, everything else is built on them, and a wrapper reaches its
inner store only through that seam — so a wrapped store passes the whole store contract."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import mfm_dist
from mfm_dist.artifacts import (
    ArtifactKind,
    ArtifactStore,
    ArtifactStoreWrapper,
    KindLike,
    get_json,
    put_json,
)
from mfm_dist.errors import Corruption, StorageError
from mfm_dist.ids import ArtifactId
from mfm_dist.stores.memory import InMemoryArtifactStore
from mfm_dist.testing import ArtifactStoreContract


class Counting(ArtifactStoreWrapper):
    """Counts the raw calls that pass through it (the shape of the workers' timing wrapper)."""

    def __init__(self, inner: ArtifactStore) -> None:
        super().__init__(inner)
        self.puts = 0
        self.gets = 0

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        self.puts += 1
        return self.inner.put_raw(artifact_id, kind, data)

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        self.gets += 1
        return self.inner.get_raw(artifact_id)


class Unlisted(ArtifactStore):
    """A minimal backend: the raw seam and `exists`, nothing else."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.closed = False

    def exists(self, artifact_id: str) -> bool:
        return artifact_id in self.blobs

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        self.blobs.setdefault(str(artifact_id), data)
        return artifact_id

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        return self.blobs[str(artifact_id)]

    def close(self) -> None:
        self.closed = True

    def peek_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {k: self.blobs[k] for k in keys if k in self.blobs}  # a "fast tier"


def test_the_seam_is_what_a_backend_must_implement() -> None:
    assert ArtifactStore.__abstractmethods__ == {"exists", "put_raw", "get_raw"}
    assert mfm_dist.ArtifactStoreWrapper is ArtifactStoreWrapper


def test_a_minimal_backend_gets_verified_reads_and_keyed_records() -> None:
    store = Unlisted()
    aid = put_json(store, ArtifactKind.OUTPUT, {"a": 1}, "test")
    assert get_json(store, aid) == {"a": 1}
    store.put_keyed("e" * 64, ArtifactKind.OUTPUT, b"not hashed")
    assert store.get_keyed("e" * 64) == b"not hashed"
    store.blobs[str(aid)] = b'{"a":2}'
    with pytest.raises(Corruption):
        store.get(aid)
    with pytest.raises(StorageError) as caught:
        store.ids_with_prefix(aid[:8])
    assert caught.value.code == "id_prefix_unsupported"


def test_a_wrapper_reaches_its_inner_store_through_the_seam() -> None:
    inner = InMemoryArtifactStore()
    wrapped = Counting(inner)
    assert wrapped.url == inner.url
    aid = wrapped.put(ArtifactKind.OUTPUT, b"bytes")
    wrapped.put_keyed("f" * 64, ArtifactKind.OUTPUT, b"link")
    assert wrapped.get(aid) == b"bytes" and wrapped.get_keyed("f" * 64) == b"link"
    assert (wrapped.puts, wrapped.gets) == (2, 2)
    assert inner.get(aid) == b"bytes"  # written to the inner store
    assert wrapped.exists(aid) and wrapped.ids_with_prefix(aid[:8]) == [aid]
    inner.tamper(aid, b"other")
    with pytest.raises(Corruption):
        wrapped.get(aid)  # the wrapper's reads are verified like any other


def test_a_wrapper_delegates_what_it_does_not_override() -> None:
    inner = Unlisted()
    wrapped = ArtifactStoreWrapper(inner)
    with pytest.raises(StorageError):
        wrapped.ids_with_prefix("ab")  # the inner store cannot list: neither can the wrapper
    aid = wrapped.put(ArtifactKind.OUTPUT, b"x")
    assert wrapped.peek_many([aid, "f" * 64]) == {aid: b"x"}  # its fast tier is asked
    assert InMemoryArtifactStore().peek_many([aid]) == {}  # no fast tier: nothing
    wrapped.close()
    assert inner.closed


class TestWrappedArtifacts(ArtifactStoreContract):
    """A wrapper around the reference backend is a complete artifact store."""

    @pytest.fixture
    def artifact_store(self) -> ArtifactStore:
        return Counting(InMemoryArtifactStore())

    def tamper(self, store: ArtifactStore, artifact_id: str, data: bytes) -> None:
        assert isinstance(store, Counting) and isinstance(store.inner, InMemoryArtifactStore)
        store.inner.tamper(artifact_id, data)
