"""Choose store backends by URL (docs/storage.md), never by editing code.

Events: `memory://`, `sqlite:///path/to/events.sqlite3`, `redis://host:port/db`.
Artifacts: `memory://`, `file:///path/to/dir`, `s3://bucket/prefix?endpoint=http://host:9000`.
The settings (`mfm_dist.settings.Settings`: `MFM_EVENTS_URL` / `MFM_ARTIFACTS_URL`, else
the embedded stores under `MFM_HOME`, default `./.mfm`) choose the URLs and carry the
credentials; the backends never read the environment. Backends with extra dependencies are
imported only when their scheme is used, so the core needs no Redis or S3 client.

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
from mfm_dist.settings import DEFAULT_HOME, RedisCredentials, S3Credentials, Settings
from mfm_dist.stores.base import EventStore

REDIS_SCHEMES = ("redis", "rediss", "unix")
"""The URL schemes of the Redis event store."""


class UnsupportedStoreUrl(InvalidInput):
    def __init__(self, what: str, url: str) -> None:
        super().__init__("store_url_invalid", f"unsupported {what} store URL: {redact_url(url)}")


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    path = parts.netloc + parts.path if parts.netloc not in ("", "localhost") else parts.path
    if not path:
        raise UnsupportedStoreUrl("local", url)
    return Path(path)


def open_event_store(
    url: str, *, read_only: bool = False, redis: RedisCredentials | None = None
) -> EventStore:
    """The event store at `url`; `redis`: the credentials for a Redis URL without its own."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from mfm_dist.stores.memory import InMemoryEventStore

        return InMemoryEventStore()
    if scheme == "sqlite":
        from mfm_dist.stores.sqlite import SqliteEventStore

        return SqliteEventStore(_local_path(url), read_only=read_only)
    if scheme in REDIS_SCHEMES:
        from mfm_dist.stores.redis_events import RedisEventStore

        return RedisEventStore.from_url(url, credentials=redis)
    raise UnsupportedStoreUrl("event", url)


def open_artifact_store(
    url: str, *, read_only: bool = False, s3: S3Credentials | None = None
) -> ArtifactStore:
    """The artifact store at `url`; `s3`: the credentials for an `s3://` URL (none:
    anonymous requests)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from mfm_dist.stores.memory import InMemoryArtifactStore

        return InMemoryArtifactStore()
    if scheme == "file":
        from mfm_dist.stores.files import FileArtifactStore

        return FileArtifactStore(_local_path(url), read_only=read_only)
    if scheme == "s3":
        from mfm_dist.stores.s3_artifacts import S3ArtifactStore

        return S3ArtifactStore.from_url(url, credentials=s3)
    raise UnsupportedStoreUrl("artifact", url)


@dataclass
class Stores:
    events: EventStore
    artifacts: ArtifactStore

    def close(self) -> None:
        self.events.close()
        self.artifacts.close()


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """`home`, else the default `./.mfm` (the configured home is `Settings.home`)."""
    return Path(home or DEFAULT_HOME)


def default_urls(home: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """The embedded stores' URLs under `home` (absolute `sqlite:///…` and `file:///…`)."""
    return Settings(home=resolve_home(home)).store_urls()


def open_stores(
    events_url: str | None = None,
    artifacts_url: str | None = None,
    home: str | os.PathLike[str] | None = None,
    *,
    read_only: bool = False,
    settings: Settings | None = None,
) -> Stores:
    """Open the event and artifact stores: the URLs given, else those of `settings`, else
    the embedded stores under `home` (else the settings' home).

    A public entry point: without `settings` it reads the environment
    (`Settings.from_env()`), as `open_stores()` always has — pass settings to choose."""
    config = (settings if settings is not None else Settings.from_env()).with_stores(
        home=home, events_url=events_url, artifacts_url=artifacts_url
    )
    events_in_force, artifacts_in_force = config.store_urls()
    events = open_event_store(events_in_force, read_only=read_only, redis=config.redis)
    try:
        artifacts = open_artifact_store(artifacts_in_force, read_only=read_only, s3=config.s3)
    except BaseException:
        events.close()
        raise
    return Stores(events=events, artifacts=artifacts)
