"""The drawn run graph's layout, computed from the plan (docs/dashboard.md#the-drawn-graph).

Boxes are placed left to right by dependency level. So that a large plan stays drawable:

* a level of more than `WIDE_LEVEL` states is drawn as groups: one box per *family* (state
  ids equal but for their trailing digits: `item_0000` … `item_9998`), or one box for the
  whole level when it still has more than `WIDE_LEVEL` boxes;
* a chain of more than `LONG_CHAIN` states (each the only successor of the one before, and
  it the only predecessor of the next) is drawn as one box.

A box is one state or a group; an edge joins two boxes and stands for every dependency
between their states. Boxes within a level are ordered by the barycentre of their
neighbours (a few sweeps each way), which keeps edges short and crossings few. A plan that
still needs more than `MAX_BOXES` boxes or `MAX_EDGES` edges is not drawn: the layout
says why, and the page shows every state as a square instead.

Pure: only the plan's shape (canonical order, predecessors, levels) goes in.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass

WIDE_LEVEL = 24
LONG_CHAIN = 12
MAX_BOXES = 400
MAX_EDGES = 1200
SWEEPS = 4

BOX_W = 176
STATE_H = 26
GROUP_H = 48
GAP_X = 64
GAP_Y = 10
PAD = 12
LABEL_CHARS = 24

_TRAILING_DIGITS = re.compile(r"\d+$")


@dataclass(frozen=True)
class Box:
    """One box of the drawing: a state (`kind` "state") or a group of states."""

    key: int
    kind: str
    """"state", "family" (ids equal but for trailing digits), "level" or "chain"."""
    members: tuple[int, ...]
    """Canonical indices of its states (one for a state box), in canonical order."""
    label: str
    layer: int
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Edge:
    source: int
    target: int
    count: int
    """How many of the plan's dependencies this edge stands for."""


@dataclass(frozen=True)
class Layout:
    boxes: list[Box]
    edges: list[Edge]
    width: int
    height: int
    states: int
    not_drawn: str | None = None
    """Why the plan is not drawn (then there are no boxes)."""

    def box_of(self) -> list[int]:
        """The box of each state, by canonical index."""
        owner = [0] * self.states
        for box in self.boxes:
            for i in box.members:
                owner[i] = box.key
        return owner


def layout(order: Sequence[str], preds: Sequence[Sequence[int]], levels: Sequence[int]) -> Layout:
    """The layout of a plan given by its states in canonical order, each state's
    predecessors (canonical indices) and dependency levels."""
    n = len(order)
    if n == 0:
        return Layout([], [], 0, 0, 0, "the plan has no states")
    groups = _level_groups(order, levels)
    groups, edges = _chains(groups, _group_edges(groups, preds, n))
    if len(groups) > MAX_BOXES or len(edges) > MAX_EDGES:
        reason = (
            f"not drawn: {n:,} states need {len(groups):,} boxes and {len(edges):,} edges even "
            f"with wide levels and long chains grouped (the drawing stops at {MAX_BOXES:,} "
            f"boxes or {MAX_EDGES:,} edges, beyond which it is neither readable nor quick); "
            "every state is shown as a square below"
        )
        return Layout([], [], 0, 0, n, reason)
    topo = _topological(len(groups), edges)
    layer = [0] * len(groups)
    incoming: list[list[int]] = [[] for _ in groups]
    outgoing: list[list[int]] = [[] for _ in groups]
    for a, b in edges:
        incoming[b].append(a)
        outgoing[a].append(b)
    for g in topo:
        if incoming[g]:
            layer[g] = 1 + max(layer[a] for a in incoming[g])
    columns = _order_columns(topo, layer, incoming, outgoing)
    prefix = common_prefix(order)
    boxes = _place(columns, groups, order, prefix)
    edge_list = [Edge(a, b, count) for (a, b), count in sorted(edges.items())]
    width = max(b.x + b.w for b in boxes) + PAD
    height = max(b.y + b.h for b in boxes) + PAD
    return Layout(sorted(boxes, key=lambda b: b.key), edge_list, width, height, n)


_Group = tuple[str, list[int]]


def family(state_id: str) -> str:
    """States of one family differ only in their trailing digits."""
    return _TRAILING_DIGITS.sub("", state_id)


def _level_groups(order: Sequence[str], levels: Sequence[int]) -> list[_Group]:
    by_level: dict[int, list[int]] = {}
    for i, lvl in enumerate(levels):
        by_level.setdefault(lvl, []).append(i)
    groups: list[_Group] = []
    for lvl in sorted(by_level):
        members = by_level[lvl]
        if len(members) <= WIDE_LEVEL:
            groups.extend(("state", [i]) for i in members)
            continue
        families: dict[str, list[int]] = {}
        for i in members:
            families.setdefault(family(order[i]), []).append(i)
        parts: list[_Group] = [("family" if len(m) > 1 else "state", m) for m in families.values()]
        groups.extend(parts if len(parts) <= WIDE_LEVEL else [("level", members)])
    return groups


def _group_edges(
    groups: list[_Group], preds: Sequence[Sequence[int]], n: int
) -> dict[tuple[int, int], int]:
    owner = [0] * n
    for g, (_, members) in enumerate(groups):
        for i in members:
            owner[i] = g
    edges: dict[tuple[int, int], int] = {}
    for i in range(n):
        b = owner[i]
        for p in preds[i]:
            key = (owner[p], b)
            edges[key] = edges.get(key, 0) + 1
    return edges


def _chains(
    groups: list[_Group], edges: dict[tuple[int, int], int]
) -> tuple[list[_Group], dict[tuple[int, int], int]]:
    """Chains of more than LONG_CHAIN single-state boxes, merged into one box each."""
    outs: list[list[int]] = [[] for _ in groups]
    ins: list[list[int]] = [[] for _ in groups]
    for a, b in edges:
        outs[a].append(b)
        ins[b].append(a)

    def linked(a: int) -> int | None:
        """The box `a` chains into, if any."""
        if groups[a][0] != "state" or len(outs[a]) != 1:
            return None
        b = outs[a][0]
        return b if groups[b][0] == "state" and len(ins[b]) == 1 else None

    has_link_in = [False] * len(groups)
    for a in range(len(groups)):
        target = linked(a)
        if target is not None:
            has_link_in[target] = True
    merged_into = list(range(len(groups)))
    merged: list[list[int]] = []
    for a in range(len(groups)):
        if has_link_in[a] or linked(a) is None:
            continue
        chain = [a]
        nxt = linked(a)
        while nxt is not None:
            chain.append(nxt)
            nxt = linked(nxt)
        if len(chain) > LONG_CHAIN:
            merged.append(chain)
    if not merged:
        return groups, edges
    for chain in merged:
        for g in chain[1:]:
            merged_into[g] = chain[0]
    new_index: dict[int, int] = {}
    out: list[_Group] = []
    chain_of = {chain[0]: chain for chain in merged}
    for g, group in enumerate(groups):
        if merged_into[g] != g:
            continue
        new_index[g] = len(out)
        if g in chain_of:
            members = sorted(i for c in chain_of[g] for i in groups[c][1])
            out.append(("chain", members))
        else:
            out.append(group)
    remapped: dict[tuple[int, int], int] = {}
    for (a, b), count in edges.items():
        key = (new_index[merged_into[a]], new_index[merged_into[b]])
        if key[0] != key[1]:
            remapped[key] = remapped.get(key, 0) + count
    return out, remapped


def _topological(count: int, edges: dict[tuple[int, int], int]) -> list[int]:
    """Boxes in a topological order (Kahn's algorithm, lowest box first among the ready)."""
    indegree = [0] * count
    outs: list[list[int]] = [[] for _ in range(count)]
    for a, b in edges:
        indegree[b] += 1
        outs[a].append(b)
    ready = [g for g in range(count) if indegree[g] == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        g = heapq.heappop(ready)
        out.append(g)
        for b in outs[g]:
            indegree[b] -= 1
            if indegree[b] == 0:
                heapq.heappush(ready, b)
    if len(out) != count:  # grouping cannot make a cycle; guard the invariant all the same
        raise ValueError("the grouped plan is not acyclic")
    return out


def _order_columns(
    topo: list[int], layer: list[int], incoming: list[list[int]], outgoing: list[list[int]]
) -> list[list[int]]:
    """Boxes per layer, ordered by the barycentre of their neighbours' positions."""
    columns: list[list[int]] = [[] for _ in range(max(layer) + 1)]
    for g in topo:
        columns[layer[g]].append(g)
    pos = [0.0] * len(layer)
    for column in columns:
        _reindex(column, pos)
    for _ in range(SWEEPS):
        for c in range(1, len(columns)):
            _sort(columns[c], incoming, pos)
        for c in range(len(columns) - 2, -1, -1):
            _sort(columns[c], outgoing, pos)
    return columns


def _sort(column: list[int], neighbours: list[list[int]], pos: list[float]) -> None:
    """Order `column` by the mean position of each box's neighbours (a box without any
    keeps its place)."""

    def barycentre(g: int) -> float:
        near = neighbours[g]
        return sum(pos[a] for a in near) / len(near) if near else pos[g]

    column.sort(key=barycentre)
    _reindex(column, pos)


def _reindex(column: list[int], pos: list[float]) -> None:
    """Positions within a column as fractions of its height (columns differ in size)."""
    scale = 1.0 / max(1, len(column))
    for k, g in enumerate(column):
        pos[g] = (k + 0.5) * scale


def common_prefix(order: Sequence[str]) -> str:
    """The dotted segments every state id starts with (never an id's last segment)."""
    low, high = min(order), max(order)  # what these two share, every id between shares
    k = 0
    while k < len(low) and k < len(high) and low[k] == high[k]:
        k += 1
    cut = low.rfind(".", 0, k)
    return low[: cut + 1] if cut >= 0 else ""


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _label(kind: str, members: list[int], order: Sequence[str], prefix: str) -> str:
    def local(i: int) -> str:
        return order[i][len(prefix) :]

    first, last = local(members[0]), local(members[-1])
    if kind == "state":
        return _short(first)
    if kind == "chain":
        return _short(f"{first} → {last}")
    if kind == "family":
        return _short(f"{first} … {last}")
    return _short(f"{first} … {last} (mixed)")


def _place(
    columns: list[list[int]],
    groups: list[_Group],
    order: Sequence[str],
    prefix: str,
) -> list[Box]:
    def height(g: int) -> int:
        return STATE_H if groups[g][0] == "state" else GROUP_H

    column_h = [sum(height(g) for g in col) + GAP_Y * (len(col) - 1) for col in columns]
    tallest = max(column_h)
    boxes: list[Box] = []
    for c, column in enumerate(columns):
        x = PAD + c * (BOX_W + GAP_X)
        y = PAD + (tallest - column_h[c]) // 2
        for g in column:
            kind, members = groups[g]
            h = height(g)
            label = _label(kind, members, order, prefix)
            boxes.append(Box(g, kind, tuple(members), label, c, x, y, BOX_W, h))
            y += h + GAP_Y
    return boxes
