"""Which states of a plan are ancestors of which: a compact reachability index (docs/merge.md).

The fan-out merge asks, for states in canonical order, "is X an ancestor of Y", "how many
ancestors has Y" and "which ancestors of Y are not ancestors of its predecessor P". A bitmask
of every state's ancestors answers all three with integer operations, but costs Σ ancestors
bits: n²/2 for a chain of n states (625 MB and quadratic build time at 100,000), in every
process that compiles the plan.

This index keeps the bitmask's speed and exactness but stores each ancestor set as a
**prefix** and a **residual**: `limit[y]` is the first canonical position that is not an
ancestor of `y` (every position below it is one), and `residual[y]` the bitmask of the
ancestors above it, shifted down by `limit[y]`. What is stored is the part of the ancestry
that is not simply "everything before": nothing for a chain, a join or anything downstream of
a join; the items of a fan-out share one small integer; a state of a DAG of width w keeps
about the bits of the states that run beside it. It is never larger than the old bitmask
(the residual is a subset of its bits), and it is built from the predecessors' residuals
with the same integer operations, on these smaller integers.

(A path cover with per-chain reach maps was measured too: smaller for narrow lattices, but
as large as the bitmasks and 40 times slower to build on random DAGs with many roots, where
no prefix forms and the reach maps hold thousands of chains.)
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence


class Reachability:
    """The ancestor sets of a plan's states, by canonical position (see the module doc):
    `ancestors(y) = [0, limit[y]) ∪ {limit[y] + k for each bit k of residual[y]}`, with
    `limit[y]` exact, so bit 0 of a residual is never set."""

    __slots__ = ("_limit", "_residual")

    def __init__(self, preds: Sequence[Sequence[int]]) -> None:
        n = len(preds)
        self._limit = limit = array("i", [0]) * n  # (positions: a plan has < 2**31 states)
        self._residual: list[int] = [0] * n
        residual = self._residual
        covers: dict[int, int] = {}  # a state's cover residual, shared by its successors
        for y in range(n):
            ps = preds[y]
            if not ps:
                continue
            if len(ps) == 1:
                # One predecessor: the ancestors are exactly its cover (it and its
                # ancestors), computed once and shared by all its single-predecessor
                # successors (a fan-out's items all hold the same integer).
                p = ps[0]
                if limit[p] == p:  # p's cover is the prefix [0, p]
                    limit[y] = p + 1
                else:
                    limit[y] = limit[p]
                    cover = covers.get(p)
                    if cover is None:
                        cover = covers[p] = residual[p] | 1 << (p - limit[p])
                    residual[y] = cover
                continue
            # Several: OR the covers above the largest of their prefixes, then extend the
            # prefix over the run of positions the union covers (the join of a fan-out
            # covers every item: its whole ancestry becomes a prefix).
            low = 0
            for p in ps:
                cover_limit = p + 1 if limit[p] == p else limit[p]
                if cover_limit > low:
                    low = cover_limit
            mask = 0
            if len(ps) < 64:
                for p in ps:
                    r = residual[p]
                    if r:
                        mask |= r >> (low - limit[p])  # (limit[p] <= low)
                    if p >= low:
                        mask |= 1 << (p - low)
            else:
                for p in ps:
                    r = residual[p]
                    if r:
                        mask |= r >> (low - limit[p])
                mask |= mask_of([p - low for p in ps if p >= low])
            if mask & 1:
                run = (~mask & (mask + 1)).bit_length() - 1  # trailing ones
                low += run
                mask >>= run
            limit[y] = low
            residual[y] = mask

    # -- queries ------------------------------------------------------------------------------
    def is_ancestor(self, a: int, b: int) -> bool:
        low = self._limit[b]
        if a < low:
            return True
        return a < b and bool(self._residual[b] >> (a - low) & 1)

    def count(self, p: int) -> int:
        """How many ancestors `p` has."""
        return self._limit[p] + self._residual[p].bit_count()

    def prefix(self, p: int) -> int:
        """Every canonical position below this one is an ancestor of `p`."""
        return self._limit[p]

    def cover_mask(self, p: int) -> int:
        """The bitmask of `p` and its ancestors over canonical positions (as wide as `p`:
        for a one-off computation, not to be kept per state)."""
        low = self._limit[p]
        return (1 << low) - 1 | self._residual[p] << low | 1 << p

    def ancestors_outside(self, y: int, cover: int | None) -> list[int]:
        """The ancestors of `y` that are neither `cover` nor an ancestor of it, in canonical
        order (`cover` must be None or an ancestor of `y`).

        Integer work over the positions between the cover's prefix and `y`, plus the
        answer: for a chain state and its predecessor, nothing."""
        limit, residual = self._limit, self._residual
        top = limit[y]
        if cover is None:
            low, covered = 0, 0
        elif limit[cover] == cover:
            low, covered = cover + 1, 0
        else:
            low, covered = limit[cover], residual[cover] | 1 << (cover - limit[cover])
        # Relative to `low` (≤ top: the cover's prefix is made of ancestors of `y`).
        needed = (1 << (top - low)) - 1 | residual[y] << (top - low)
        return bits(needed & ~covered, low)


def mask_of(offsets: list[int]) -> int:
    """The bitmask with these bits set, built in one pass (OR-ing them one by one into a
    growing integer is quadratic for the thousands of items of a join)."""
    if len(offsets) < 64:
        mask = 0
        for k in offsets:
            mask |= 1 << k
        return mask
    buf = bytearray(max(offsets) // 8 + 1)
    for k in offsets:
        buf[k >> 3] |= 1 << (k & 7)
    return int.from_bytes(buf, "little")


def bits(mask: int, offset: int = 0) -> list[int]:
    """The positions of the set bits of `mask`, ascending, plus `offset` — in one pass over
    its digits (clearing the lowest bit one at a time is quadratic on wide masks)."""
    if not mask:
        return []
    digits = bin(mask)[:1:-1]  # least significant first
    out = []
    find = digits.find
    k = find("1")
    while k >= 0:
        out.append(k + offset)
        k = find("1", k + 1)
    return out
