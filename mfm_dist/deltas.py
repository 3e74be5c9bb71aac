"""Deltas: what a completed state changed in its context (docs/merge.md#deltas).

Kept apart from the merge machinery (`engine.merge`) so the staged context, which
computes its own delta, depends on nothing else of the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mfm_dist.canonical import JsonValue


def json_equal(a: JsonValue, b: JsonValue) -> bool:
    """Structural equality that, unlike `==`, tells `true` from `1`."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@dataclass(frozen=True)
class Delta:
    writes: dict[str, JsonValue] = field(default_factory=dict)
    deletes: frozenset[str] = frozenset()

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.writes) | self.deletes

    def apply_to(self, content: dict[str, JsonValue]) -> None:
        for key in self.deletes:
            content.pop(key, None)
        content.update(self.writes)


_MISSING = object()


def compute_delta(base: Mapping[str, JsonValue], new: Mapping[str, JsonValue]) -> Delta:
    """The delta from `base` to `new`. A value that is the base's own object (a snapshot
    built from its base shares every unchanged value) is equal without being walked."""
    writes = {}
    for k, v in new.items():
        old = base.get(k, _MISSING)
        if old is not v and (old is _MISSING or not json_equal(old, v)):
            writes[k] = v
    deletes = frozenset(k for k in base if k not in new)
    return Delta(writes=writes, deletes=deletes)


