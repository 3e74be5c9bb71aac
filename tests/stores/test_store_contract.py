"""The project's own backends against the reusable store contract (`mfm_dist.testing`):
events in memory, SQLite and a real redis-server; artifacts in memory, files and a real S3
server (SeaweedFS). Server fixtures (`redis_url`, `s3_artifacts_url`) come from
`support.servers`."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.errors import InvalidInput
from mfm_dist.journal import JournalDraft
from mfm_dist.settings import Settings
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.memory import InMemoryArtifactStore, InMemoryEventStore
from mfm_dist.stores.redis_events import RedisEventStore
from mfm_dist.stores.s3_artifacts import S3ArtifactStore
from mfm_dist.stores.sqlite import SqliteEventStore
from mfm_dist.testing import ArtifactStoreContract, EventStoreContract


class TestMemoryEvents(EventStoreContract):
    @pytest.fixture
    def event_store(self) -> Iterator[EventStore]:
        store = InMemoryEventStore()
        yield store
        store.close()


class TestSqliteEvents(EventStoreContract):
    @pytest.fixture
    def event_store(self, tmp_path: Path) -> Iterator[EventStore]:
        store = SqliteEventStore(tmp_path / "ev" / "e.sqlite3")
        yield store
        store.close()


class TestRedisEvents(EventStoreContract):
    @pytest.fixture
    def event_store(self, redis_url: str) -> Iterator[EventStore]:
        store = RedisEventStore.from_url(redis_url)
        yield store
        store.close()


class TestMemoryArtifacts(ArtifactStoreContract):
    @pytest.fixture
    def artifact_store(self) -> ArtifactStore:
        return InMemoryArtifactStore()

    def tamper(self, store: ArtifactStore, artifact_id: str, data: bytes) -> None:
        assert isinstance(store, InMemoryArtifactStore)
        store.tamper(artifact_id, data)


class TestFileArtifacts(ArtifactStoreContract):
    @pytest.fixture
    def artifact_store(self, tmp_path: Path) -> ArtifactStore:
        return FileArtifactStore(tmp_path / "artifacts")

    def tamper(self, store: ArtifactStore, artifact_id: str, data: bytes) -> None:
        assert isinstance(store, FileArtifactStore)
        path = store.object_path(artifact_id)
        os.chmod(path, 0o644)
        path.write_bytes(data)


class TestS3Artifacts(ArtifactStoreContract):
    @pytest.fixture
    def artifact_store(self, s3_artifacts_url: str) -> Iterator[ArtifactStore]:
        store = S3ArtifactStore.from_url(s3_artifacts_url, credentials=Settings.from_env().s3)
        yield store
        store.close()

    def tamper(self, store: ArtifactStore, artifact_id: str, data: bytes) -> None:
        assert isinstance(store, S3ArtifactStore)
        key = store.object_key(artifact_id)
        store.raw_client().put_object(store.bucket, key, io.BytesIO(data), len(data))


# --- not per backend --------------------------------------------------------------------------


def test_journal_records_are_checked_before_anything_is_written() -> None:
    with pytest.raises(InvalidInput) as secret:
        JournalDraft(kind="note", body={"password": "hunter2"}, ts_millis=1)
    assert secret.value.code == "secrets_detected"
    with pytest.raises(InvalidInput) as floats:
        JournalDraft(kind="note", body={"x": 1.5}, ts_millis=1)
    assert floats.value.code == "float_not_allowed"
    with pytest.raises(ValueError):
        JournalDraft(kind="Bad Kind", body=None, ts_millis=1)
