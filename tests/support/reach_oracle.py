"""The bitmask ancestors and merge tracker mfm_dist used before mfm_dist/reach.py, kept as
the oracle the new index is compared against (tests/engine/test_reach.py) and as the baseline
of scripts/bench_plan.py; plus generators of plan shapes for both.

`LegacyReach` builds `ancestors[p]`, a bitmask of every ancestor of canonical position p,
exactly as `CompiledPlan.build` did; `LegacyTracker` is `MergeTracker` with the methods that
read those masks, verbatim. Both are quadratic for long chains: that is why they were
replaced, and why they are only used on small plans or to measure the difference.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from mfm_dist.engine.merge import Delta, MergeConflict, MergeTracker, PackedDelta
from mfm_dist.ids import OpId
from mfm_dist.plan import CompiledPlan, ExecutionPlan, StateGraph
from mfm_dist.state import FnState

NOOP = FnState(lambda ctx, io, rec: None)


class LegacyReach:
    """`ancestors[p]`: a bitmask over canonical positions (the old `CompiledPlan.ancestors`).

    It has the query methods of `mfm_dist.reach.Reachability`, answered from the masks, so
    it can stand in for it (the benchmark's baseline builds plans with it)."""

    def __init__(self, preds: Sequence[Sequence[int]]) -> None:
        n = len(preds)
        ancestors = [0] * n
        for p in range(n):
            mask = 0
            for q in preds[p]:
                mask |= ancestors[q] | (1 << q)
            ancestors[p] = mask
        self.ancestors = ancestors

    def is_ancestor(self, a: int, b: int) -> bool:
        return bool(self.ancestors[b] >> a & 1)

    def count(self, p: int) -> int:
        return self.ancestors[p].bit_count()

    def prefix(self, p: int) -> int:
        """The first canonical position that is not an ancestor of `p`."""
        mask = self.ancestors[p]
        return (~mask & (mask + 1)).bit_length() - 1

    def ancestors_outside(self, y: int, cover: int | None) -> list[int]:
        covered = 0 if cover is None else self.ancestors[cover] | (1 << cover)
        return bits(self.ancestors[y] & ~covered)


def bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class LegacyTracker(MergeTracker):
    """`MergeTracker` as it was with `CompiledPlan.ancestors` bitmasks (the methods below are
    the old code, reading the masks from `ancestors`)."""

    def __init__(
        self, plan: CompiledPlan, ancestors: list[int], *, detect_conflicts: bool = True
    ) -> None:
        super().__init__(plan, detect_conflicts=detect_conflicts)
        self.ancestors = ancestors

    def _is_ancestor(self, a: int, b: int) -> bool:
        return bool(self.ancestors[b] >> a & 1)

    def record(
        self, index: int, snapshot_id: str, delta: Delta | PackedDelta
    ) -> MergeConflict | None:
        clashing: dict[int, list[str]] = {}
        if self.detect_conflicts:
            ancestors = self.ancestors[index]
            sole, many = self._sole_writer, self._writers
            for key in sorted(delta.keys):
                mask = many.get(key)
                if mask is None:
                    writer = sole.get(key)
                    if writer is None:
                        sole[key] = index
                        continue
                    mask = 1 << writer
                candidates = mask & ~ancestors
                while candidates:
                    low = candidates & -candidates
                    other = low.bit_length() - 1
                    candidates ^= low
                    if not self._is_ancestor(index, other):
                        clashing.setdefault(other, []).append(key)
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

    def blocks(self, index: int) -> bool:
        ancestors = self.ancestors[index]
        return any(ancestors >> a & 1 and ancestors >> b & 1 for a, b in self.pairs)

    def base_plan(self, index: int) -> tuple[int | None, list[int]]:
        needed = self.ancestors[index]
        if needed == 0:
            return None, []
        best: int | None = None
        best_cover = 0
        for p in self.plan.preds[index]:
            cover = self.ancestors[p] | (1 << p)
            if cover.bit_count() > best_cover.bit_count():
                best, best_cover = p, cover
        rest = needed & ~best_cover
        return best, bits(rest)

    def final_plan(self) -> tuple[int | None, list[int]]:
        done = 0
        for i in self.deltas:
            done |= 1 << i
        best: int | None = None
        best_cover = 0
        for i in self.deltas:
            cover = self.ancestors[i] | (1 << i)
            if cover & ~done == 0 and cover.bit_count() > best_cover.bit_count():
                best, best_cover = i, cover
        return best, bits(done & ~best_cover)


# -- plan shapes ------------------------------------------------------------------------------
Shape = tuple[int, list[tuple[int, int]]]
"""A plan shape: a number of states and edges between their indices."""


def chain(n: int) -> Shape:
    return n, [(i, i + 1) for i in range(n - 1)]


def fan_out(items: int) -> Shape:
    """root → items → join."""
    join = items + 1
    return items + 2, [(0, i) for i in range(1, join)] + [(i, join) for i in range(1, join)]


def stages(width: int, depth: int, legs: int = 1) -> Shape:
    """`depth` fan-out/join diamonds in a row, each item a chain of `legs` states."""
    edges: list[tuple[int, int]] = []
    n = 1
    join = 0
    for _ in range(depth):
        ends = []
        for _ in range(width):
            edges.append((join, n))
            for _ in range(legs - 1):
                edges.append((n, n + 1))
                n += 1
            ends.append(n)
            n += 1
        edges.extend((e, n) for e in ends)
        join = n
        n += 1
    return n, edges


def lattice(width: int, depth: int) -> Shape:
    """Layers of `width` states, each linked to its neighbours (w-1, w, w+1) in the next."""
    edges = []
    for d in range(depth - 1):
        for w in range(width):
            for v in (w - 1, w, w + 1):
                if 0 <= v < width:
                    edges.append((d * width + w, (d + 1) * width + v))
    return width * depth, edges


def random_dag(rng: random.Random, n: int, fan_in: int, window: int) -> Shape:
    """Each state after the first few has 0..fan_in predecessors among the `window` before."""
    edges = set()
    for j in range(1, n):
        for _ in range(rng.randint(0, fan_in)):
            edges.add((rng.randrange(max(0, j - window), j), j))
    return n, sorted(edges)


def plan_of(
    shape: Shape, rng: random.Random | None = None, *, shuffle: bool = False
) -> ExecutionPlan:
    """The plan of a shape (states and edges declared in a random order when `shuffle`, so
    canonical positions and `preds` order differ from the shape's indices)."""
    n, edges = shape
    names = list(range(n))
    edge_list = list(edges)
    if shuffle and rng is not None:
        rng.shuffle(names)
        rng.shuffle(edge_list)
    width = len(str(n))
    graph = StateGraph()
    for i in names:
        graph.add(f"m.s.n{i:0{width}d}", NOOP)
    for a, b in edge_list:
        graph.edge(f"m.s.n{a:0{width}d}", f"m.s.n{b:0{width}d}")
    return ExecutionPlan(op_id=OpId("m"), graph=graph)
