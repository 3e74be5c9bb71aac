"""Snapshot links: a context snapshot stored as its base plus what changed
(docs/storage.md#snapshot-links).

A link is a canonical JSON record `{"base", "chain", "depth", "link": 1, "set",
"snapshot", "unset"}` — the snapshot it rebuilds, the snapshot it applies to, the
top-level keys it sets (with their values) and removes, how many links lie between it
and a snapshot stored in full (`depth`, ≥ 1) and how many link bytes that chain already
holds before it (`chain`). It is written through the ordinary artifact store interface
(kind `{"Other": "snapshot_link"}`), under a key derived from the snapshot id, because a
reader only knows that id: the key keeps the id's first 48 hex digits (so the link sits
in the snapshot's shard and is found by the same id prefixes) and ends with 16 hex
digits that mark it as a link key. Its bytes do not hash to that key; what vouches for
a link is the snapshot it rebuilds, whose SHA-256 must equal the snapshot id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mfm_dist.artifacts import ArtifactStore, OtherArtifactKind
from mfm_dist.canonical import JsonValue, canonical_bytes_unchecked, parse_canonical
from mfm_dist.errors import Corruption, MfmError
from mfm_dist.ids import ArtifactId

LINK_KIND = OtherArtifactKind(value="snapshot_link")
KEY_PREFIX = 48
"""Hex digits of the snapshot id a link key keeps."""
_KEY_TAG = b"mfm:snapshot-link:"


def _tag(head: str) -> str:
    return hashlib.sha256(_KEY_TAG + head.encode("ascii")).hexdigest()[: 64 - KEY_PREFIX]


def link_key(snapshot_id: str) -> ArtifactId:
    """Where the link of `snapshot_id` is stored."""
    head = snapshot_id[:KEY_PREFIX]
    return ArtifactId(head + _tag(head))


def is_link_key(key: str) -> bool:
    """True if `key` has the form of a link key (a content address has it with
    probability 2^-64)."""
    return len(key) == 64 and key[KEY_PREFIX:] == _tag(key[:KEY_PREFIX])


class SnapshotLink(BaseModel):
    """The persisted shape of a link (read side; `encode_link` writes it)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    link: Literal[1]
    snapshot: ArtifactId
    base: ArtifactId
    depth: int = Field(ge=1)
    chain: int = Field(ge=0)
    writes: dict[str, Any] = Field(alias="set")
    deletes: list[str] = Field(alias="unset")

    def apply_to(self, content: dict[str, JsonValue]) -> None:
        for key in self.deletes:
            content.pop(key, None)
        content.update(self.writes)


def encode_link(
    snapshot_id: str,
    base_id: str,
    depth: int,
    chain: int,
    writes: Mapping[str, JsonValue],
    deletes: frozenset[str] | set[str],
) -> bytes:
    """Canonical bytes of a link. Not checked again: every value was checked when a handler
    wrote it (docs/canonical-json.md); a reader checks the whole record."""
    record = {  # plain `str`s: id subclasses would send the encoder down its slow path
        "base": str(base_id),
        "chain": chain,
        "depth": depth,
        "link": 1,
        "set": dict(writes),
        "snapshot": str(snapshot_id),
        "unset": sorted(deletes),
    }
    return canonical_bytes_unchecked(record)


def broken_link(snapshot_id: str, why: str) -> Corruption:
    """A link that cannot rebuild the snapshot its key names: the stored object does not
    hold that snapshot's content."""
    return Corruption(
        "artifact_content_address_mismatch",
        f"the link of snapshot {snapshot_id} does not rebuild it: {why}",
        details={"artifact_id": snapshot_id},
    )


def decode_link(data: bytes, snapshot_id: str) -> SnapshotLink:
    """Read a link with the canonical reader (secrets, floats and canonical form checked,
    docs/canonical-json.md#verified-reads), then its shape: it must name `snapshot_id`,
    remove sorted keys it does not also set, and not link a snapshot to itself."""
    value = parse_canonical(data, f"link of snapshot {snapshot_id}")
    try:
        link = SnapshotLink.model_validate(value)
    except ValidationError:
        raise broken_link(snapshot_id, "not a link record") from None
    if link.snapshot != snapshot_id:
        raise broken_link(snapshot_id, f"it names snapshot {link.snapshot}")
    if link.base == snapshot_id:
        raise broken_link(snapshot_id, "it names itself as its base")
    unset = link.deletes
    if any(a >= b for a, b in pairwise(unset)) or not link.writes.keys().isdisjoint(unset):
        raise broken_link(snapshot_id, "its removed keys are not sorted and distinct")
    return link


def _linked_snapshot(artifacts: ArtifactStore, key: str, prefix: str) -> str | None:
    """The snapshot id the link at `key` names, if it is one starting with `prefix`."""
    try:
        value = orjson.loads(artifacts.get_keyed(key))
    except (MfmError, orjson.JSONDecodeError):
        return None
    named = value.get("snapshot") if isinstance(value, dict) else None
    if not isinstance(named, str) or not ArtifactId._check(named):
        return None
    return named if link_key(named) == key and named.startswith(prefix) else None


def snapshots_behind_links(artifacts: ArtifactStore, found: list[str], prefix: str) -> list[str]:
    """Turn the link keys among artifact ids found for an id prefix into the ids of the
    snapshots they rebuild (a snapshot stored as a link has no object of its own), once
    each. A prefix longer than a link key keeps (48 digits) still finds its link."""
    plain = [f for f in found if not is_link_key(f)]
    heads = {f[:KEY_PREFIX] for f in plain}
    out = list(plain)
    for key in found:
        if is_link_key(key) and key[:KEY_PREFIX] not in heads:
            named = _linked_snapshot(artifacts, key, prefix)
            if named is not None:
                out.append(named)
    if not out and len(prefix) > KEY_PREFIX:
        named = _linked_snapshot(artifacts, link_key(prefix), prefix)
        if named is not None:
            out.append(named)
    return sorted(set(out))
