"""Context snapshots: canonical JSON objects, stored in full or as links to their base
(docs/storage.md#snapshot-links).

A snapshot's id is always the SHA-256 of the canonical bytes of the whole context. How it
is stored is this module's business: a snapshot derived from a base by a small change is
written as a link (the base's id plus the keys set and removed, `snapshot_links`), so a
long run stores what each state changed rather than its whole context again; a snapshot
is written in full when the link bytes accumulated since the chain's last full snapshot
would exceed its own size (which bounds both the stored bytes and the bytes a rebuild
reads), and a run's final snapshot is always written in full. Readers get full snapshots
either way: `load` rebuilds a linked snapshot from its chain and requires its SHA-256 to
equal its id.

What makes this cheap per state: the canonical encoding of a snapshot is kept member by
member (`snapshot_encoding`), so the next one re-encodes only the keys a state set; the
hash of the full bytes is the only per-state cost that grows with the context.

Snapshots are immutable, so caching them by id is always safe. Every cache is bounded:
decoded snapshots by entries and by bytes of canonical JSON (one larger than a quarter of
that is not kept — except as one of the few most recent snapshots, which the next state
of a run starts from), member encodings, link records and storage facts by entries.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from mfm_dist.artifacts import ArtifactKind, ArtifactStore
from mfm_dist.canonical import (
    JsonValue,
    artifact_id_of_bytes,
    canonical_bytes,
    canonical_bytes_unchecked,
    parse_canonical,
)
from mfm_dist.engine.lru import Lru
from mfm_dist.engine.merge import Delta
from mfm_dist.engine.snapshot_encoding import EncodedSnapshot
from mfm_dist.engine.snapshot_links import (
    LINK_KIND,
    SnapshotLink,
    broken_link,
    decode_link,
    encode_link,
    link_key,
)
from mfm_dist.errors import Corruption, MfmError, NotFound
from mfm_dist.ids import ArtifactId

Snapshot = Mapping[str, JsonValue]
Mapper = Callable[[Callable[[str], None], list[str]], object]
"""Runs a function over a list of ids (e.g. on a thread pool): `prefetch`'s parallelism."""

CACHE_BYTES = 16 * 1024 * 1024
"""Default bound of a snapshot cache, in bytes of canonical JSON (decoded, a snapshot
takes several times that): a snapshot larger than a quarter of it is kept only as one of
the `RECENT` most recent snapshots."""
RECENT = 4
"""Snapshots kept whatever their size: the last ones written or rebuilt (the base of a
run's next state). Consecutive snapshots share their values, so these cost little more
than their dict tables."""
ENCODINGS = 8
"""Member encodings kept (the bases the next snapshots are derived from)."""
ENCODED_MEMBERS = 4_000_000
LINKS = 65_536
LINK_BYTES = 8 * 1024 * 1024
FACTS = 65_536
MAX_DEPTH = 1_000_000
"""Links between a snapshot and the full one its chain starts from, at most. The byte rule
(`SnapshotStore` docstring) is what bounds chains; this only guards against runaway ones."""


@dataclass(frozen=True)
class StoredAs:
    """How a snapshot is stored, as far as this process knows: `depth` links from a full
    snapshot (0: stored in full), `chain` bytes of links since that full snapshot."""

    depth: int
    chain: int


FULL = StoredAs(0, 0)


@dataclass
class SnapshotStats:
    """What a store wrote, for benchmarks and the storage-bound tests: every derived
    snapshot's would-be link (`delta_bytes`, stored or not) against what was stored."""

    links: int = 0
    link_bytes: int = 0
    fulls: int = 0
    full_bytes: int = 0
    deltas: int = 0
    delta_bytes: int = 0


@dataclass(frozen=True)
class PreparedSnapshot:
    """A snapshot encoded and hashed, not yet stored (`SnapshotStore.prepare`). Its full
    bytes are built only if they are stored (`encoded` holds them as members)."""

    snapshot_id: ArtifactId
    content: dict[str, JsonValue]
    size: int
    encoded: EncodedSnapshot | None
    data: bytes | None = None
    base_id: str | None = None
    delta: Delta | None = None

    def full_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.encoded is not None
        return self.encoded.to_bytes()

    @classmethod
    def of_bytes(cls, data: bytes, content: dict[str, JsonValue]) -> PreparedSnapshot:
        return cls(artifact_id_of_bytes(data), content, len(data), None, data)


class SnapshotStore:
    """Reads and writes context snapshots through an artifact store, with bounded caches.

    Storage rule, per snapshot derived from a base by a delta (docs/storage.md proves the
    bound it gives): write a link when the link bytes of the base's chain plus this link's
    bytes stay within the size of the snapshot's full canonical bytes, else write it in
    full. A second over-budget derivation from the same linked base (a fork: several
    states start from it) writes that base in full once, so its branches link to it
    instead of each paying a full snapshot.
    """

    def __init__(
        self,
        artifacts: ArtifactStore,
        cache_size: int = 4096,
        cache_bytes: int = CACHE_BYTES,
        *,
        links: bool = True,
        max_depth: int = MAX_DEPTH,
    ) -> None:
        """`links=False` writes every snapshot in full (reading links still works)."""
        self.artifacts = artifacts
        self.links = links
        self.max_depth = max_depth
        self._cache_bytes = cache_bytes
        self._contents: Lru[dict[str, JsonValue]] = Lru(cache_size, cache_bytes)
        self._recent: Lru[dict[str, JsonValue]] = Lru(RECENT, 1 << 62)
        self._encodings: Lru[EncodedSnapshot] = Lru(ENCODINGS, ENCODED_MEMBERS)
        self._links: Lru[tuple[SnapshotLink, int]] = Lru(LINKS, LINK_BYTES)
        self._stored: Lru[StoredAs] = Lru(FACTS, FACTS)
        self._spent: Lru[bool] = Lru(FACTS, FACTS)
        self._lock = threading.Lock()
        self.stats = SnapshotStats()
        self._found_full = 0
        self._found_linked = 0

    # -- reading ------------------------------------------------------------------------------
    def load(self, snapshot_id: str) -> dict[str, JsonValue]:
        """The snapshot content (verified; a JSON object). Do not mutate it."""
        hit = self._cached(snapshot_id)
        if hit is not None:
            return hit
        return self._resolve(snapshot_id)[0]

    def load_bytes(self, snapshot_id: str) -> bytes:
        """The snapshot's full canonical bytes (what `mfm artifact` prints), verified."""
        data: bytes | None = None
        if self._cached(snapshot_id) is None:
            data = self._resolve(snapshot_id)[1]
        if data is not None:
            return data
        with self._lock:
            encoded = self._encodings.get(snapshot_id)
        if encoded is not None:
            return encoded.to_bytes()
        return canonical_bytes_unchecked(self.load(snapshot_id))  # verified when cached

    def is_cached(self, snapshot_id: str) -> bool:
        return self._cached(snapshot_id) is not None

    def prefetch(self, snapshot_ids: Iterable[str], run_all: Mapper) -> None:
        """Fetch what loading `snapshot_ids` will read — a link record or a full snapshot
        each — with `run_all` (in parallel: the store's latency dominates), so the loads
        that follow, in chain order, rebuild from memory. Faults are left to `load`."""
        wanted = sorted({s for s in snapshot_ids if self._cached(s) is None})
        found = self.artifacts.peek_many([k for s in wanted for k in (link_key(s), s)])
        todo = [s for s in wanted if self._take_peeked(s, found) is None]

        def fetch(snapshot_id: str) -> None:
            with contextlib.suppress(MfmError):
                self._read_stored(snapshot_id)

        if todo:
            run_all(fetch, todo)

    # -- writing ------------------------------------------------------------------------------
    def prepare(
        self,
        base_id: str,
        base: Snapshot,
        delta: Delta,
        content: dict[str, JsonValue],
    ) -> PreparedSnapshot:
        """Encode and hash `content`, the base with `delta` applied (every value in it was
        checked when it was written). Only the changed members are encoded when the base's
        encoding is known (or can be built)."""
        base_encoded = self._encoding_for(base_id, base)
        encoded = (
            base_encoded.derive(delta.writes, delta.deletes) if base_encoded is not None else None
        )
        if encoded is None:
            whole = PreparedSnapshot.of_bytes(canonical_bytes_unchecked(content), content)
            return replace(whole, base_id=base_id, delta=delta)
        return PreparedSnapshot(
            encoded.digest(), content, encoded.size, encoded, base_id=base_id, delta=delta
        )

    def commit(self, prepared: PreparedSnapshot) -> ArtifactId:
        """Store a prepared snapshot (as a link when the rule allows) unless it is known to
        be stored; identical content gives the identical id."""
        sid = prepared.snapshot_id
        stored: StoredAs | None = None
        if sid != prepared.base_id and self._stored_as(sid) is None:
            stored = self._write(prepared)
        self._remember(sid, prepared.content, prepared.size, stored, recent=True)
        if prepared.encoded is not None:
            with self._lock:
                self._encodings.put(sid, prepared.encoded, len(prepared.encoded.keys))
        return sid

    def save_derived(
        self, base_id: str, base: Snapshot, delta: Delta, content: dict[str, JsonValue]
    ) -> ArtifactId:
        """`prepare` then `commit`."""
        return self.commit(self.prepare(base_id, base, delta, content))

    def save(self, content: Snapshot, where: str = "context snapshot") -> ArtifactId:
        """Store a snapshot in full (checked first); identical content gives the identical
        id."""
        value = dict(content)
        return self.commit(PreparedSnapshot.of_bytes(canonical_bytes(value, where), value))

    def id_of(self, content: Snapshot) -> ArtifactId:
        """The id `save` would return, without storing anything."""
        return artifact_id_of_bytes(canonical_bytes(dict(content), "context snapshot"))

    def ensure_full(self, snapshot_id: str) -> None:
        """Make sure the snapshot is stored in full (a run's final snapshot: the one people
        and tools fetch by id, with one read)."""
        if self._stored_as(snapshot_id) == FULL:
            return
        self._put_full(self.load_bytes(snapshot_id))
        with self._lock:
            self._stored.put(snapshot_id, FULL)

    def clear_cache(self) -> None:
        with self._lock:
            for cache in (self._contents, self._recent, self._encodings, self._links):
                cache.clear()

    # -- internals: writing -------------------------------------------------------------------
    def _write(self, p: PreparedSnapshot) -> StoredAs:
        link = self._link_for(p)
        if link is not None:
            record, stored = link
            try:
                self.artifacts.put_keyed(link_key(p.snapshot_id), LINK_KIND, record)
                with self._lock:
                    self.stats.links += 1
                    self.stats.link_bytes += len(record)
                return stored
            except Corruption as exc:
                # Another writer linked the same content from another base first (its
                # record differs): store ours in full, which readers also accept.
                if exc.info.code != "artifact_content_address_mismatch":
                    raise
        self._put_full(p.full_bytes())
        return FULL

    def _put_full(self, data: bytes) -> None:
        self.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, data)
        with self._lock:
            self.stats.fulls += 1
            self.stats.full_bytes += len(data)

    def _link_for(self, p: PreparedSnapshot) -> tuple[bytes, StoredAs] | None:
        """The link to write for `p`, with how it leaves the chain; None: write it in full."""
        if not self.links or p.base_id is None or p.delta is None:
            return None
        base = self._stored_as(p.base_id)
        if base is None or base.depth + 1 > self.max_depth:
            return None
        size = p.size
        record = self._link_bytes(p, base)
        with self._lock:
            self.stats.deltas += 1
            self.stats.delta_bytes += len(record)
        if base.chain + len(record) <= size:
            return record, StoredAs(base.depth + 1, base.chain + len(record))
        with self._lock:
            forked = base.depth > 0 and self._spent.get(p.base_id) is not None
            if not forked:
                self._spent.put(p.base_id, True)
        if not forked:
            return None
        self.ensure_full(p.base_id)
        record = self._link_bytes(p, FULL)
        return (record, StoredAs(1, len(record))) if len(record) <= size else None

    @staticmethod
    def _link_bytes(p: PreparedSnapshot, base: StoredAs) -> bytes:
        assert p.base_id is not None and p.delta is not None
        return encode_link(
            p.snapshot_id,
            p.base_id,
            base.depth + 1,
            base.chain,
            p.delta.writes,
            p.delta.deletes,
        )

    def _encoding_for(self, snapshot_id: str, content: Snapshot) -> EncodedSnapshot | None:
        with self._lock:
            hit = self._encodings.get(snapshot_id)
        if hit is not None:
            return hit
        built = EncodedSnapshot.of(content)
        if built is not None:
            with self._lock:
                self._encodings.put(snapshot_id, built, len(built.keys))
        return built

    # -- internals: reading -------------------------------------------------------------------
    def _cached(self, snapshot_id: str) -> dict[str, JsonValue] | None:
        with self._lock:
            hit = self._recent.get(snapshot_id)
            return hit if hit is not None else self._contents.get(snapshot_id)

    def _stored_as(self, snapshot_id: str) -> StoredAs | None:
        with self._lock:
            return self._stored.get(snapshot_id)

    def _remember(
        self,
        snapshot_id: str,
        content: dict[str, JsonValue],
        size: int,
        stored: StoredAs | None,
        *,
        recent: bool = False,
    ) -> None:
        with self._lock:
            if stored is not None:
                self._stored.put(snapshot_id, stored)
            if recent:
                self._recent.put(snapshot_id, content)
            if size <= self._cache_bytes // 4:
                self._contents.put(snapshot_id, content, size)

    def _link_of(self, snapshot_id: str) -> SnapshotLink | None:
        """The snapshot's link (None when it has none stored)."""
        with self._lock:
            hit = self._links.get(snapshot_id)
        if hit is not None:
            return hit[0]
        try:
            data = self.artifacts.get_keyed(link_key(snapshot_id))
        except NotFound:
            return None
        link = decode_link(data, snapshot_id)
        with self._lock:
            self._links.put(snapshot_id, (link, len(data)), len(data))
        return link

    def _read_full(self, snapshot_id: str) -> tuple[dict[str, JsonValue], bytes]:
        data = self.artifacts.get(snapshot_id)
        value = parse_canonical(data, "context snapshot")
        if not isinstance(value, dict):
            raise Corruption(
                "snapshot_not_object",
                f"context snapshot {snapshot_id} is not a JSON object",
                details={"snapshot_id": snapshot_id},
            )
        self._remember(snapshot_id, value, len(data), FULL)
        return value, data

    def _take_peeked(
        self, snapshot_id: str, found: Mapping[str, bytes]
    ) -> SnapshotLink | tuple[dict[str, JsonValue], bytes] | None:
        """Keep what the store's fast tier had for the snapshot (`ArtifactStore.peek_many`):
        its link record (now cached), else its full content if the bytes hash to its id.
        None: it had neither usable, and the durable store must be read."""
        record = found.get(link_key(snapshot_id))
        if record is not None:
            try:
                link = decode_link(record, snapshot_id)
            except MfmError:
                link = None
            if link is not None:
                with self._lock:
                    self._links.put(snapshot_id, (link, len(record)), len(record))
                self._found(full=False)
                return link
        data = found.get(snapshot_id)
        if data is None or artifact_id_of_bytes(data) != snapshot_id:
            return None
        try:
            value = parse_canonical(data, "context snapshot")
        except MfmError:
            return None
        if not isinstance(value, dict):
            return None
        self._remember(snapshot_id, value, len(data), FULL)
        self._found(full=True)
        return value, data

    def _resolve(self, snapshot_id: str) -> tuple[dict[str, JsonValue], bytes | None]:
        """Read a snapshot not in the cache: from the store's fast tier if it holds it in
        full, else through its link if it has one (falling back to a full copy if the link
        is broken and one exists), else in full."""
        with self._lock:
            linked = self._links.get(snapshot_id) is not None
        if not linked:
            peeked = self._take_peeked(
                snapshot_id, self.artifacts.peek_many([link_key(snapshot_id), snapshot_id])
            )
            if isinstance(peeked, tuple):
                return peeked
            if peeked is None and self._full_first():
                return self._resolve_full_first(snapshot_id)
        try:
            link = self._link_of(snapshot_id)
            if link is None:
                found = self._read_full(snapshot_id)
                self._found(full=True)
                return found
            self._found(full=False)
            return self._rebuild(snapshot_id, link)
        except NotFound as exc:
            if exc.info.code != "artifact_not_found":
                raise
            failed: MfmError = exc
        except Corruption as exc:
            failed = exc
        try:
            return self._read_full(snapshot_id)
        except NotFound:
            raise failed from None

    def _resolve_full_first(self, snapshot_id: str) -> tuple[dict[str, JsonValue], bytes | None]:
        """`_resolve` asking for the full copy first, with the same outcome in every case:
        a readable full copy or link wins; if neither, the link's fault when the full copy is
        missing, else the full copy's."""
        try:
            found = self._read_full(snapshot_id)
            self._found(full=True)
            return found
        except NotFound as exc:
            if exc.info.code != "artifact_not_found":
                raise
            failed: MfmError = exc
            full_missing = True
        except Corruption as exc:
            failed, full_missing = exc, False
        try:
            link = self._link_of(snapshot_id)
            if link is not None:
                self._found(full=False)
                return self._rebuild(snapshot_id, link)
        except NotFound as exc:
            if exc.info.code != "artifact_not_found" or full_missing:
                raise
        except Corruption:
            if full_missing:
                raise
        raise failed

    def _full_first(self) -> bool:
        """Whether to ask for a snapshot's full copy before its link record: a snapshot is
        stored one way, and asking the other way first costs a request that finds nothing
        (the durable store's latency dominates a read). The way most reads found so far
        goes first; links first until then (a fresh store's derived snapshots)."""
        return self._found_full > self._found_linked

    def _found(self, *, full: bool) -> None:
        """Count the form a requested snapshot was found in (not the bases and links a
        rebuild walks through). A hint only: a lost update does not matter."""
        if full:
            self._found_full += 1
        else:
            self._found_linked += 1

    def _read_stored(self, snapshot_id: str) -> None:
        """Read what loading the snapshot needs (its link record or its full copy) into
        the caches, asking for the more common form first (`_full_first`)."""
        if self._full_first():
            try:
                self._read_full(snapshot_id)
                self._found(full=True)
                return
            except NotFound as exc:
                if exc.info.code != "artifact_not_found":
                    raise
            if self._link_of(snapshot_id) is None:
                raise NotFound(
                    f"snapshot {snapshot_id} not found",
                    code="artifact_not_found",
                    details={"artifact_id": snapshot_id},
                )
            self._found(full=False)
            return
        if self._link_of(snapshot_id) is None:
            self._read_full(snapshot_id)
            self._found(full=True)
        else:
            self._found(full=False)

    def _rebuild(
        self, snapshot_id: str, top: SnapshotLink
    ) -> tuple[dict[str, JsonValue], bytes | None]:
        """Walk the links back to a snapshot in memory or stored in full, apply them forward,
        and require the result to hash to `snapshot_id`. Depths must fall by one per link
        (so a walk ends); a link of depth 1 names a base stored in full."""
        chain = [top]
        while True:
            base_id = chain[-1].base
            start = self._cached(base_id)
            if start is not None:
                break
            if chain[-1].depth > 1:
                below = self._link_of(base_id)
                if below is not None:
                    if below.depth != chain[-1].depth - 1:
                        raise broken_link(snapshot_id, f"the depth of {base_id} does not match")
                    chain.append(below)
                    continue
            start = self._read_base(snapshot_id, base_id)
            break
        encoded = self._encoding_for(base_id, start)
        content = dict(start)
        for link in reversed(chain):
            link.apply_to(content)
            if encoded is not None:
                encoded = encoded.derive(link.writes, link.deletes)
        data: bytes | None = None
        if encoded is not None:
            size, rebuilt_id = encoded.size, encoded.digest()
        else:
            data = canonical_bytes_unchecked(content)
            size, rebuilt_id = len(data), artifact_id_of_bytes(data)
        if rebuilt_id != snapshot_id:
            raise broken_link(snapshot_id, "the rebuilt bytes hash to another id")
        with self._lock:
            record = self._links.get(snapshot_id)
        stored = StoredAs(top.depth, top.chain + record[1]) if record is not None else None
        self._remember(snapshot_id, content, size, stored, recent=True)
        if encoded is not None:
            with self._lock:
                self._encodings.put(snapshot_id, encoded, len(encoded.keys))
        return content, data

    def _read_base(self, snapshot_id: str, base_id: str) -> dict[str, JsonValue]:
        try:
            return self._read_full(base_id)[0]
        except NotFound as exc:
            if exc.info.code != "artifact_not_found":
                raise
            raise NotFound(
                f"snapshot {snapshot_id} is stored as a link to {base_id}, which is missing",
                code="artifact_not_found",
                details={"artifact_id": base_id, "snapshot_id": snapshot_id},
            ) from None


def read_artifact(artifacts: ArtifactStore, artifact_id: str) -> bytes:
    """The verified bytes of artifact `artifact_id` — a snapshot stored as a link included,
    rebuilt to its full canonical bytes (what `mfm artifact` and the dashboard serve).
    A missing artifact is `artifact_not_found` as from `ArtifactStore.get`."""
    try:
        return artifacts.get(artifact_id)
    except NotFound as exc:
        if exc.info.code != "artifact_not_found":
            raise
    return SnapshotStore(artifacts, links=False).load_bytes(artifact_id)
