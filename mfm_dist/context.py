"""The staged context a handler sees (docs/execution.md#staged-context).

Reads see the overlay, then the base; writes and deletes go to the overlay;
deleting a missing key is fine. Values are validated when written, so a float or
a secret fails the handler at the line that wrote it, not later at snapshot time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from mfm_dist.canonical import JsonValue, canonical_copy
from mfm_dist.deltas import Delta, json_equal
from mfm_dist.errors import MissingKey, SecretsDetected
from mfm_dist.secrets import is_secret_string

_MISSING: Any = object()


class StagedContext:
    """Base snapshot plus this attempt's overlay."""

    def __init__(self, base: Mapping[str, JsonValue]) -> None:
        self._base = base
        self._overlay: dict[str, JsonValue] = {}
        self._deleted: set[str] = set()

    def get(self, key: str, default: Any = _MISSING) -> JsonValue:
        """The value of `key` (a copy); `MissingKey` unless a default is given."""
        if key in self._overlay:
            return copy.deepcopy(self._overlay[key])
        if key not in self._deleted and key in self._base:
            return copy.deepcopy(self._base[key])
        if default is _MISSING:
            raise MissingKey(key)
        return default

    def __getitem__(self, key: str) -> JsonValue:
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return key in self._overlay or (key not in self._deleted and key in self._base)

    def set(self, key: str, value: JsonValue) -> None:
        """Write `key`; the value must be canonical-JSON-able and secret-free."""
        if not isinstance(key, str):
            raise TypeError("context keys are strings")
        if is_secret_string(key):
            raise SecretsDetected("context key")
        # Check once and store the JSON form (tuples become lists, no aliasing with the
        # caller's objects), so what the handler wrote equals what a reader of the snapshot
        # will see. The key rides along so its rules (and the nesting depth) apply as in the
        # snapshot.
        self._overlay[key] = canonical_copy({key: value}, "context value")[key]
        self._deleted.discard(key)

    def __setitem__(self, key: str, value: JsonValue) -> None:
        self.set(key, value)

    def delete(self, key: str) -> None:
        self._overlay.pop(key, None)
        if key in self._base:
            self._deleted.add(key)

    def keys(self) -> Iterator[str]:
        for key in self._base:
            if key not in self._deleted and key not in self._overlay:
                yield key
        yield from self._overlay

    def merged(self) -> dict[str, JsonValue]:
        """Base with the overlay applied: the content of the next snapshot. (A C-level copy
        of the base, then the few changes: unchanged values are the base's own objects.)"""
        out = dict(self._base)
        for key in self._deleted:
            out.pop(key, None)
        out.update(self._overlay)
        return out

    def delta(self) -> Delta:
        """What `merged()` changed relative to the base — exactly `compute_delta(base,
        merged())` (docs/merge.md#deltas), found from the overlay alone: writes are the
        overlay's keys whose value is new or differs from the base's, deletes the base keys
        deleted and not written again."""
        base = self._base
        writes = {
            k: v
            for k, v in self._overlay.items()
            if k not in base or not json_equal(base[k], v)
        }
        return Delta(writes=writes, deletes=frozenset(self._deleted))


StateContext = StagedContext
