"""Context snapshots: canonical JSON objects stored as `ContextSnapshot` artifacts.

Snapshots are immutable, so caching them by id is always safe; the cache is
bounded — in entries and in bytes (the size of their canonical JSON) — so neither a long
run nor a few huge snapshots (the merge of a 100,000-state fan-out) make it grow without
limit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping

import orjson

from mfm_dist.artifacts import ArtifactKind, ArtifactStore
from mfm_dist.canonical import JsonValue, artifact_id_of_bytes, canonical_bytes, parse_canonical
from mfm_dist.errors import Corruption
from mfm_dist.ids import ArtifactId

Snapshot = Mapping[str, JsonValue]

CACHE_BYTES = 16 * 1024 * 1024
"""Default bound of a snapshot cache, in bytes of canonical JSON (decoded, a snapshot
takes several times that): a snapshot larger than a quarter of it is not cached."""


class SnapshotStore:
    """Reads and writes context snapshots through an artifact store, with a bounded cache."""

    def __init__(
        self, artifacts: ArtifactStore, cache_size: int = 4096, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.artifacts = artifacts
        self._cache: OrderedDict[str, tuple[dict[str, JsonValue], int]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def load(self, snapshot_id: str) -> dict[str, JsonValue]:
        """The snapshot content (canonical reader; must be a JSON object). Do not mutate it."""
        with self._lock:
            hit = self._cache.get(snapshot_id)
            if hit is not None:
                self._cache.move_to_end(snapshot_id)
                return hit[0]
        data = self.artifacts.get(snapshot_id)
        value = parse_canonical(data, "context snapshot")
        if not isinstance(value, dict):
            raise Corruption(
                "snapshot_not_object",
                f"context snapshot {snapshot_id} is not a JSON object",
                details={"snapshot_id": snapshot_id},
            )
        self._remember(snapshot_id, value, len(data))
        return value

    def save(self, content: Mapping[str, JsonValue], where: str = "context snapshot") -> ArtifactId:
        """Store a full snapshot; identical content gives the identical id."""
        return self.save_bytes(canonical_bytes(dict(content), where))

    def save_bytes(self, data: bytes, content: Mapping[str, JsonValue] | None = None) -> ArtifactId:
        """Store canonical snapshot bytes. The cache keeps their decoded form (or `content`
        when the caller already holds exactly that JSON), never other aliases."""
        snapshot_id = artifact_id_of_bytes(data)
        with self._lock:
            cached = snapshot_id in self._cache
        if not cached:
            self.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, data)
            if len(data) <= self._cache_bytes // 4:
                value = dict(content) if content is not None else orjson.loads(data)
                self._remember(snapshot_id, value, len(data))
        return snapshot_id

    def id_of(self, content: Mapping[str, JsonValue]) -> ArtifactId:
        """The id `save` would return, without storing anything."""
        return artifact_id_of_bytes(canonical_bytes(dict(content), "context snapshot"))

    def _remember(self, snapshot_id: str, content: dict[str, JsonValue], size: int) -> None:
        if size > self._cache_bytes // 4:
            return  # a huge snapshot would push out everything else
        with self._lock:
            previous = self._cache.pop(snapshot_id, None)
            if previous is not None:
                self._cached_bytes -= previous[1]
            self._cache[snapshot_id] = (content, size)
            self._cached_bytes += size
            while len(self._cache) > self._cache_size or self._cached_bytes > self._cache_bytes:
                _, (_, dropped) = self._cache.popitem(last=False)
                self._cached_bytes -= dropped

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0
