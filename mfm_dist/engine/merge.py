"""Delta-based context flow for fan-out/join (docs/merge.md).

The delta of a completed state is the set of keys whose value it changed or
removed relative to its base. The base of a state is the initial snapshot with
the deltas of all its ancestors applied in canonical order; two states the DAG
does not order must not touch the same key. Everything here is a pure function
of the plan and the completed set, so every backend and every schedule agrees.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from mfm_dist.canonical import JsonValue
from mfm_dist.deltas import Delta as Delta
from mfm_dist.deltas import compute_delta as compute_delta
from mfm_dist.deltas import json_equal as json_equal
from mfm_dist.errors import ContextError, ErrorInfo
from mfm_dist.ids import StateId
from mfm_dist.plan import CompiledPlan
from mfm_dist.reach import bits, mask_of


class PackedDelta:
    """A recorded delta kept compactly: its writes as JSON bytes (decoded when applied),
    its deletes as a tuple. A run keeps one per completed state for as long as it runs.
    (Values nested deeper than orjson writes are kept as they are.)"""

    __slots__ = ("_deletes", "_writes")

    def __init__(
        self, writes: bytes | dict[str, JsonValue] | None, deletes: tuple[str, ...]
    ) -> None:
        self._writes = writes
        self._deletes = deletes

    @classmethod
    def pack(cls, delta: Delta) -> PackedDelta:
        # Snapshot values are canonical JSON (integers within ±(2^53−1), valid strings):
        # orjson writes them so that loading gives back exactly the same values.
        writes: bytes | dict[str, JsonValue] | None = None
        if delta.writes:
            try:
                # Copied: orjson's own result keeps its whole (4 KiB) write buffer.
                writes = bytes(memoryview(orjson.dumps(delta.writes)))
            except orjson.JSONEncodeError:  # nested deeper than orjson's limit
                writes = dict(delta.writes)
        return cls(writes, tuple(sorted(delta.deletes)))

    @property
    def writes(self) -> dict[str, JsonValue]:
        if self._writes is None:
            return {}
        if isinstance(self._writes, dict):
            return dict(self._writes)
        value: dict[str, JsonValue] = orjson.loads(self._writes)
        return value

    @property
    def deletes(self) -> frozenset[str]:
        return frozenset(self._deletes)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.writes) | frozenset(self._deletes)

    def apply_to(self, content: dict[str, JsonValue]) -> None:
        for key in self._deletes:
            content.pop(key, None)
        if self._writes is not None:
            content.update(self.writes)

    def unpack(self) -> Delta:
        return Delta(writes=self.writes, deletes=self.deletes)


@dataclass(frozen=True)
class MergeConflict:
    keys: tuple[str, ...]
    first: StateId
    second: StateId

    def payload(self) -> dict[str, JsonValue]:
        return {"keys": list(self.keys), "states": [str(self.first), str(self.second)]}

    @classmethod
    def from_payload(cls, payload: JsonValue) -> MergeConflict | None:
        """Read back the `context_merge_conflict` event payload (None if malformed)."""
        if not isinstance(payload, dict):
            return None
        keys, states = payload.get("keys"), payload.get("states")
        if not isinstance(keys, list) or not isinstance(states, list) or len(states) != 2:
            return None
        try:
            return cls(tuple(str(k) for k in keys), StateId(states[0]), StateId(states[1]))
        except ValueError:
            return None

    def error(self) -> ErrorInfo:
        return ContextError(
            "context_merge_conflict",
            f"states {self.first} and {self.second} both changed "
            f"{', '.join(self.keys)} without an ordering edge",
            details=self.payload(),
        ).info


class MergeTracker:
    """Completed deltas of a fan-out run and the key-writer index used to find conflicts.

    Memory is linear in the completed states: deltas are packed, and a key written by one
    state records that state's index (a bitmask, whose size grows with the highest index,
    only for the keys several states wrote)."""

    def __init__(self, plan: CompiledPlan, *, detect_conflicts: bool = True) -> None:
        self.plan = plan
        self.detect_conflicts = detect_conflicts
        self.deltas: dict[int, PackedDelta] = {}
        self.snapshot_ids: dict[int, str] = {}
        self._sole_writer: dict[str, int] = {}  # key -> the one completed state that wrote it
        self._writers: dict[str, int] = {}  # key -> bitmask of the completed states that wrote it
        self._tangled: set[str] = set()
        """Keys of `_writers` two of whose writers are unordered (they conflicted)."""
        self.pairs: set[tuple[int, int]] = set()
        """Every pair of completed, unordered states whose deltas share a key (a < b)."""

    def record(
        self, index: int, snapshot_id: str, delta: Delta | PackedDelta
    ) -> MergeConflict | None:
        """Add a completed state; return the first conflict it creates, if any.

        A clash is a writer of one of its keys that is neither an ancestor nor a descendant
        of `index`. Without conflicts the writers of a key are totally ordered, so they are
        all ancestors of the latest one: when that one is an ancestor of `index` (a chain
        rewriting a counter) the check is one lookup. Otherwise only the writers past the
        ancestor prefix of `index` are examined, in canonical order.
        """
        clashing: dict[int, list[str]] = {}
        if self.detect_conflicts:
            plan = self.plan
            sole, many, tangled = self._sole_writer, self._writers, self._tangled
            for key in sorted(delta.keys):
                mask = many.get(key)
                if mask is None:
                    writer = sole.get(key)
                    if writer is None:
                        sole[key] = index  # the common case: nobody else wrote this key
                        continue
                    mask = 1 << writer
                latest = mask.bit_length() - 1
                if latest >= index or key in tangled or not plan.is_ancestor(latest, index):
                    prefix = plan.reach.prefix(index)
                    # Writers below the prefix are ancestors.
                    for other in bits(mask >> prefix, prefix):
                        if not plan.ordered(other, index):
                            clashing.setdefault(other, []).append(key)
                            tangled.add(key)
                many[key] = mask | (1 << index)
                sole.pop(key, None)
        for other in clashing:
            self.pairs.add((min(index, other), max(index, other)))
        self.deltas[index] = delta if isinstance(delta, PackedDelta) else PackedDelta.pack(delta)
        self.snapshot_ids[index] = snapshot_id
        if not clashing:
            return None
        other = min(clashing)
        a, b = sorted((index, other))
        return MergeConflict(
            keys=tuple(clashing[other]), first=self.plan.order[a], second=self.plan.order[b]
        )

    def first_conflict(self) -> MergeConflict | None:
        """The conflict of the earliest pair in canonical order (deterministic), with every
        key the two states both changed."""
        if not self.pairs:
            return None
        a, b = min(self.pairs)
        keys = sorted(self.deltas[a].keys & self.deltas[b].keys)
        return MergeConflict(tuple(keys), self.plan.order[a], self.plan.order[b])

    def blocks(self, index: int) -> bool:
        """True when two of `index`'s ancestors conflict: its base is undefined."""
        is_ancestor = self.plan.is_ancestor
        return any(is_ancestor(a, index) and is_ancestor(b, index) for a, b in self.pairs)

    def base_plan(self, index: int) -> tuple[int | None, list[int]]:
        """How to build the base of `index`: (start from this completed state's snapshot
        — None for the initial snapshot — , then apply these deltas in canonical order).

        The start is the predecessor with the most ancestors (the first such in `preds`
        order), so a chain state starts from its predecessor's snapshot with nothing to
        apply."""
        reach = self.plan.reach
        if reach.count(index) == 0:
            return None, []
        best: int | None = None
        best_cover = 0
        for p in self.plan.preds[index]:
            cover = reach.count(p) + 1
            if cover > best_cover:
                best, best_cover = p, cover
        return best, reach.ancestors_outside(index, best)

    def final_plan(self) -> tuple[int | None, list[int]]:
        """How to build the merge of every completed state (same shape as `base_plan`): start
        from the completed state with the most ancestors (the first such in completion order)
        among those whose ancestors all completed."""
        plan, reach = self.plan, self.plan.reach
        done = sorted(self.deltas)
        closed: set[int] = set()  # completed states whose ancestors all completed
        for i in done:  # canonical order: a state's predecessors come first
            if all(p in closed for p in plan.preds[i]):
                closed.add(i)
        best: int | None = None
        best_cover = 0
        for i in self.deltas:
            if i in closed:
                cover = reach.count(i) + 1
                if cover > best_cover:
                    best, best_cover = i, cover
        if best is None:
            return None, done
        return best, bits(mask_of(done) & ~reach.cover_mask(best))


def apply_deltas(
    start: Mapping[str, JsonValue], deltas: Iterable[Delta | PackedDelta]
) -> dict[str, JsonValue]:
    content = dict(start)
    for delta in deltas:
        delta.apply_to(content)
    return content
