"""Canonical bytes of a snapshot kept member by member, so the next snapshot is encoded and
hashed from what changed (docs/storage.md#snapshot-links).

A snapshot is a JSON object; its RFC 8785 bytes are `{` + the members `"key":value`,
sorted by key and joined by commas, + `}`. Keeping the members of a base snapshot lets
the snapshot a state derives from it be encoded by re-encoding only the keys the state
set: the unchanged members are reused as they are (the same `bytes` objects).

The snapshot id is the SHA-256 of those bytes, and SHA-256 runs front to back: the hash
state after the first `k·BLOCK` members (and their commas) is kept, so a derived snapshot
hashes only from the last such mark before its first changed member. A run whose new keys
sort last (`item_0001`, `item_0002`, …) thus hashes a block or two per state, whatever the
size of its context; a change near the front costs a hash of the whole.

Only objects whose keys all lie in the Basic Multilingual Plane are kept this way: for
them Python's string order is RFC 8785's UTF-16 order. A key beyond U+FFFF (rare) makes
`of`/`derive` answer None and the caller encodes the whole value instead.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from mfm_dist.canonical import JsonValue, canonical_bytes_unchecked
from mfm_dist.ids import ArtifactId

BLOCK = 128
"""Members per hash mark."""
BULK_FRACTION = 8
"""A change touching more than 1/BULK_FRACTION of the members (and more than
`BULK_MIN`) rebuilds the member list in one sorted pass instead of inserting key by key
(each insertion moves the tail of the list)."""
BULK_MIN = 64

Hash = Any  # a hashlib SHA-256 object (hashlib does not export its type)


def _bmp(key: str) -> bool:
    return key.isascii() or max(key) <= "\uffff"


def encode_member(key: str, value: JsonValue) -> bytes:
    """`"key":value` in canonical form (the value was checked when it was written)."""
    return canonical_bytes_unchecked({key: value})[1:-1]


class EncodedSnapshot:
    """The canonical encoding of one snapshot as sorted members, with the hash marks known
    so far. Immutable once built, apart from adding marks and its digest when first asked
    (idempotent, so threads sharing it may race harmlessly)."""

    __slots__ = ("_body", "_digest", "_marks", "keys", "members")

    def __init__(
        self, keys: list[str], members: list[bytes], body: int, marks: list[Hash] | None = None
    ) -> None:
        self.keys = keys
        self.members = members
        self._body = body  # total length of the members
        self._marks: list[Hash] = marks if marks is not None else []
        """`_marks[k]`: SHA-256 state after `{` and members `[0, k·BLOCK)`, each + `,`.
        Never updated in place (copied first): derived snapshots share them."""
        self._digest: ArtifactId | None = None

    @property
    def size(self) -> int:
        """Length of the canonical bytes (without building them)."""
        return 2 + self._body + max(len(self.members) - 1, 0)

    @classmethod
    def of(cls, content: Mapping[str, JsonValue]) -> EncodedSnapshot | None:
        """Encode every member of `content` (None if a key lies beyond U+FFFF)."""
        keys = sorted(content)
        if not all(_bmp(k) for k in keys):
            return None
        members = [encode_member(k, content[k]) for k in keys]
        return cls(keys, members, sum(map(len, members)))

    def to_bytes(self) -> bytes:
        return b"{" + b",".join(self.members) + b"}"

    def digest(self) -> ArtifactId:
        """SHA-256 of `to_bytes()` (the snapshot id), from the last valid hash mark on."""
        if self._digest is not None:
            return self._digest
        members, n = self.members, len(self.members)
        marks = list(self._marks) or [hashlib.sha256(b"{")]
        k = len(marks) - 1
        while k > 0 and k * BLOCK >= n:  # a mark must leave at least one member after it
            k -= 1
        del marks[k + 1 :]
        state = marks[k].copy()
        while (k + 1) * BLOCK < n:
            state.update(b",".join(members[k * BLOCK : (k + 1) * BLOCK]))
            state.update(b",")
            marks.append(state.copy())
            k += 1
        state.update(b",".join(members[k * BLOCK :]))
        state.update(b"}")
        self._marks = marks
        self._digest = ArtifactId(state.hexdigest())
        return self._digest

    def derive(
        self, writes: Mapping[str, JsonValue], deletes: Iterable[str]
    ) -> EncodedSnapshot | None:
        """The encoding of this snapshot with `deletes` removed, then `writes` set (None if
        a written key lies beyond U+FFFF). Only the written members are encoded, and the
        hash marks before the first changed member are kept."""
        if not all(_bmp(k) for k in writes):
            return None
        gone = [k for k in deletes if k not in writes]
        if not writes and not gone:
            return self
        changes = len(writes) + len(gone)
        if changes > BULK_MIN and changes * BULK_FRACTION > len(self.keys):
            return self._rebuilt(writes, gone)
        keys, members, body = list(self.keys), list(self.members), self._body
        first = len(keys)
        for key in gone:
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                body -= len(members[i])
                del keys[i], members[i]
                first = min(first, i)
        for key, value in writes.items():
            member = encode_member(key, value)
            i = bisect_left(keys, key)
            if i < len(keys) and keys[i] == key:
                body += len(member) - len(members[i])
                members[i] = member
            else:
                keys.insert(i, key)
                members.insert(i, member)
                body += len(member)
            first = min(first, i)
        return EncodedSnapshot(keys, members, body, self._marks[: first // BLOCK + 1])

    def _rebuilt(self, writes: Mapping[str, JsonValue], gone: list[str]) -> EncodedSnapshot:
        by_key = dict(zip(self.keys, self.members, strict=True))
        for key in gone:
            by_key.pop(key, None)
        for key, value in writes.items():
            by_key[key] = encode_member(key, value)
        keys = sorted(by_key)
        members = [by_key[k] for k in keys]
        first = min(bisect_left(self.keys, k) for k in [*writes, *gone])
        return EncodedSnapshot(
            keys, members, sum(map(len, members)), self._marks[: first // BLOCK + 1]
        )
