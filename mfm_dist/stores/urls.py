"""Choose store backends by URL (docs/storage.md), never by editing code.

Events: `memory://`, `sqlite:///path/to/events.sqlite3`, `redis://host:port/db`.
Artifacts: `memory://`, `file:///path/to/dir`, `s3://bucket/prefix?endpoint=http://host:9000`.
`MFM_EVENTS_URL` / `MFM_ARTIFACTS_URL` override the embedded defaults under
`MFM_HOME` (default `./.mfm`). Backends with extra dependencies are imported
only when their scheme is used, so the core needs no Redis or S3 client.

`read_only=True` opens the embedded backends (SQLite, files) without creating or
changing anything, for commands that only read; the other backends are opened as
usual (a reader writes nothing to them, except that the first Redis listing after an
upgrade indexes the runs an earlier version recorded — once; see `redis_events`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.errors import InvalidInput
from mfm_dist.secrets import redact_url
from mfm_dist.stores.base import EventStore

DEFAULT_HOME = ".mfm"


class UnsupportedStoreUrl(InvalidInput):
    def __init__(self, what: str, url: str) -> None:
        super().__init__("store_url_invalid", f"unsupported {what} store URL: {redact_url(url)}")


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    path = parts.netloc + parts.path if parts.netloc not in ("", "localhost") else parts.path
    if not path:
        raise UnsupportedStoreUrl("local", url)
    return Path(path)


def open_event_store(url: str, *, read_only: bool = False) -> EventStore:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from mfm_dist.stores.memory import InMemoryEventStore

        return InMemoryEventStore()
    if scheme == "sqlite":
        from mfm_dist.stores.sqlite import SqliteEventStore

        return SqliteEventStore(_local_path(url), read_only=read_only)
    if scheme in ("redis", "rediss", "unix"):
        from mfm_dist.stores.redis_events import RedisEventStore

        return RedisEventStore.from_url(url)
    raise UnsupportedStoreUrl("event", url)


def open_artifact_store(url: str, *, read_only: bool = False) -> ArtifactStore:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from mfm_dist.stores.memory import InMemoryArtifactStore

        return InMemoryArtifactStore()
    if scheme == "file":
        from mfm_dist.stores.files import FileArtifactStore

        return FileArtifactStore(_local_path(url), read_only=read_only)
    if scheme == "s3":
        from mfm_dist.stores.s3_artifacts import S3ArtifactStore

        return S3ArtifactStore.from_url(url)
    raise UnsupportedStoreUrl("artifact", url)


@dataclass
class Stores:
    events: EventStore
    artifacts: ArtifactStore

    def close(self) -> None:
        self.events.close()
        self.artifacts.close()


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    return Path(home or os.environ.get("MFM_HOME") or DEFAULT_HOME)


def default_urls(home: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """The URLs in force: explicit environment settings, else the embedded defaults."""
    root = resolve_home(home).absolute()
    # `root` is absolute, so these read sqlite:///abs/path and file:///abs/path.
    events = os.environ.get("MFM_EVENTS_URL") or f"sqlite://{root / 'events.sqlite3'}"
    artifacts = os.environ.get("MFM_ARTIFACTS_URL") or f"file://{root / 'artifacts'}"
    return events, artifacts


def open_stores(
    events_url: str | None = None,
    artifacts_url: str | None = None,
    home: str | os.PathLike[str] | None = None,
    *,
    read_only: bool = False,
) -> Stores:
    default_events, default_artifacts = default_urls(home)
    events = open_event_store(events_url or default_events, read_only=read_only)
    try:
        artifacts = open_artifact_store(artifacts_url or default_artifacts, read_only=read_only)
    except BaseException:
        events.close()
        raise
    return Stores(events=events, artifacts=artifacts)
