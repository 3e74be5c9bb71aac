"""Which states of a plan are ancestors of which: a compact reachability index (docs/merge.md).

The fan-out merge asks, for states in canonical order, "is X an ancestor of Y", "how many
ancestors has Y" and "which ancestors of Y are not ancestors of its predecessor P". Keeping
every state's ancestor set as a bitmask answers all three with integer operations, but costs
Σ ancestors bits: n²/2 for a chain of n states (625 MB and quadratic build time at 100,000),
in every process that compiles the plan. This index answers the same questions exactly in
memory close to linear for the shapes plans have (chains, fan-outs, repeated fan-out/join
stages, lattices of bounded width), by describing each ancestor set with two pieces:

* a **prefix**: `limit[y]` is the first canonical position that is not an ancestor of `y`, so
  every position below it is one. Chains, joins and everything downstream of a join are
  all-prefix: their description is one integer.
* **chain reaches** for the ancestors at or above the prefix. The plan is covered by paths
  ("chains", built greedily in canonical order along edges); on a chain every state is an
  ancestor of the next, so an ancestor set meets each chain in a leading segment, described
  by the highest index on that chain that is an ancestor. Only chains whose segment reaches
  at or above the prefix are kept, so a state's map has at most one entry per chain "alive"
  beside it (about the width of the DAG), and a state with one predecessor shares that
  predecessor's cover instead of copying it.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence


class ChainTops:
    """Per chain, the highest index on it that is an ancestor (absent: none), immutable.

    Dense (an array indexed from `lo`, -1 for holes) when the chains it names are close
    together — the usual case, as chains alive at the same time were started near each
    other — else sparse (sorted chain ids beside their tops, looked up by bisection)."""

    __slots__ = ("keys", "lo", "tops")

    def __init__(self, lo: int, tops: array[int], keys: array[int] | None) -> None:
        self.lo = lo
        self.tops = tops
        self.keys = keys

    @classmethod
    def of(cls, entries: dict[int, int]) -> ChainTops | None:
        if not entries:
            return None
        keys = sorted(entries)
        lo, span = keys[0], keys[-1] - keys[0] + 1
        if span <= 2 * len(keys) + 8:
            tops = array("i", [-1]) * span
            for chain, top in entries.items():
                tops[chain - lo] = top
            return cls(lo, tops, None)
        return cls(lo, array("i", [entries[k] for k in keys]), array("i", keys))

    def get(self, chain: int) -> int:
        keys = self.keys
        if keys is None:
            i = chain - self.lo
            return self.tops[i] if 0 <= i < len(self.tops) else -1
        i = bisect_left(keys, chain)
        return self.tops[i] if i < len(keys) and keys[i] == chain else -1

    def items(self) -> Iterator[tuple[int, int]]:
        if self.keys is None:
            lo = self.lo
            for i, top in enumerate(self.tops):
                if top >= 0:
                    yield lo + i, top
        else:
            yield from zip(self.keys, self.tops, strict=True)

    def with_entry(self, chain: int, top: int) -> dict[int, int]:
        entries = dict(self.items())
        entries[chain] = top
        return entries


class Reachability:
    """The ancestor sets of a plan's states, by canonical position (see the module doc).

    `ancestors(y) = [0, limit[y]) ∪ {chain c's states up to index tops[y][c]}`, with `limit`
    exact (the first position that is not an ancestor) and only chains reaching at or
    above it in `tops`."""

    __slots__ = ("_chain", "_count", "_flat", "_limit", "_link", "_start", "_tops")

    def __init__(self, preds: Sequence[Sequence[int]]) -> None:
        n = len(preds)
        chain, link = self._chains(preds)
        n_chains = max(chain, default=-1) + 1
        start = array("q", [0]) * (n_chains + 1)
        for c in chain:
            start[c + 1] += 1
        for c in range(n_chains):
            start[c + 1] += start[c]
        flat = array("q", [0]) * n  # positions of chain c: flat[start[c]:start[c + 1]]
        for p in range(n):
            flat[start[chain[p]] + link[p]] = p
        self._chain, self._link, self._start, self._flat = chain, link, start, flat
        self._limit = limit = array("q", [0]) * n
        self._count = count = array("q", [0]) * n
        self._tops: list[ChainTops | None] = [None] * n
        tops = self._tops
        covers: dict[int, ChainTops | None] = {}  # a state's cover, shared by its successors
        for y in range(n):
            ps = preds[y]
            if not ps:
                continue
            if len(ps) == 1:
                # One predecessor: the ancestors are exactly its cover, built once and
                # shared (a fan-out's items all point at the same object).
                p = ps[0]
                if limit[p] == p:  # p's cover is the prefix [0, p]
                    limit[y] = p + 1
                else:
                    limit[y] = limit[p]
                    if p in covers:
                        tops[y] = covers[p]
                    else:
                        t = tops[p]
                        entries = t.with_entry(chain[p], link[p]) if t else {chain[p]: link[p]}
                        tops[y] = covers[p] = ChainTops.of(entries)
                count[y] = count[p] + 1
                continue
            low = max(p + 1 if limit[p] == p else limit[p] for p in ps)
            merged: dict[int, int] = {}
            get = merged.get
            for p in ps:
                t = tops[p]
                if t is not None:
                    for c, top in t.items():
                        if get(c, -1) < top:
                            merged[c] = top
                c = chain[p]
                if get(c, -1) < link[p]:
                    merged[c] = link[p]
            # Extend the prefix over positions the predecessors cover between them (the
            # join of a fan-out covers every item: its whole ancestry becomes a prefix).
            while low < y and get(chain[low], -1) >= link[low]:
                low += 1
            limit[y] = low
            kept = {c: top for c, top in merged.items() if flat[start[c] + top] >= low}
            tops[y] = ChainTops.of(kept)
            count[y] = low + sum(top - self._below(c, low) + 1 for c, top in kept.items())

    @staticmethod
    def _chains(preds: Sequence[Sequence[int]]) -> tuple[array[int], array[int]]:
        """Greedy path cover in canonical order: a state continues the chain of its latest
        predecessor that still ends a chain, else starts a new one. Consecutive states of a
        chain are joined by an edge, so each is an ancestor of every later one."""
        n = len(preds)
        chain = array("q", [0]) * n
        link = array("q", [0]) * n
        is_tail = bytearray(n)
        chains = 0
        for y in range(n):
            best = -1
            for p in preds[y]:
                if is_tail[p] and p > best:
                    best = p
            if best < 0:
                chain[y], link[y] = chains, 0
                chains += 1
            else:
                is_tail[best] = 0
                chain[y], link[y] = chain[best], link[best] + 1
            is_tail[y] = 1
        return chain, link

    def _below(self, c: int, position: int) -> int:
        """How many states of chain `c` lie before canonical `position`."""
        first = self._start[c]
        if self._flat[first] >= position:
            return 0
        return bisect_left(self._flat, position, first, self._start[c + 1]) - first

    # -- queries ------------------------------------------------------------------------------
    def is_ancestor(self, a: int, b: int) -> bool:
        if a < self._limit[b]:
            return True
        if a >= b:
            return False
        t = self._tops[b]
        return t is not None and t.get(self._chain[a]) >= self._link[a]

    def count(self, p: int) -> int:
        """How many ancestors `p` has."""
        return self._count[p]

    def prefix(self, p: int) -> int:
        """Every canonical position below this one is an ancestor of `p`."""
        return self._limit[p]

    def ancestors_outside(self, y: int, cover: int | None) -> list[int]:
        """The ancestors of `y` that are neither `cover` nor an ancestor of it, in canonical
        order (`cover` must be None or an ancestor of `y`).

        Work is proportional to the answer plus `y`'s chain entries, plus the positions
        between the two prefixes: for a chain state and its predecessor, nothing."""
        limit, tops, chain, link = self._limit, self._tops, self._chain, self._link
        top_y = limit[y]
        if cover is None:
            low, cover_tops, cover_chain, cover_link = 0, None, -1, -1
        else:
            low = cover + 1 if limit[cover] == cover else limit[cover]
            cover_tops, cover_chain, cover_link = tops[cover], chain[cover], link[cover]

        def covered_top(c: int) -> int:
            if c == cover_chain:
                return cover_link
            return -1 if cover_tops is None else cover_tops.get(c)

        out = [q for q in range(low, top_y) if covered_top(chain[q]) < link[q]]
        t = tops[y]
        if t is not None:
            flat, start = self._flat, self._start
            above: list[int] = []
            for c, top in t.items():
                first = max(self._below(c, top_y), covered_top(c) + 1)
                base = start[c]
                above.extend(flat[base + first : base + top + 1])
            above.sort()
            out.extend(above)
        return out
