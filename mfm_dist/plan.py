"""Execution plans: a DAG of states, its validation and its canonical order (docs/plans.md)."""

from __future__ import annotations

import contextlib
import gc
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.errors import InvalidId, InvalidPlan
from mfm_dist.ids import OpId, StateId
from mfm_dist.reach import Reachability
from mfm_dist.secrets import is_secret_string, shown
from mfm_dist.state import State


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large structure (a plan, a run's history) is
    built: each full collection traverses every object built so far, which makes building
    100,000 states take twice as long. Collection resumes afterwards as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class DependencyEdge(BaseModel):
    """`from` completes before `to` starts."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    from_: StateId = Field(alias="from")
    to: StateId


@dataclass(frozen=True)
class StateNode:
    id: StateId
    state: State


@dataclass
class StateGraph:
    states: list[StateNode] = field(default_factory=list)
    edges: list[DependencyEdge] = field(default_factory=list)

    def add(self, state_id: str, state: State) -> StateId:
        sid = StateId(state_id)
        self.states.append(StateNode(sid, state))
        return sid

    def edge(self, from_: str, to: str) -> None:
        self.edges.append(DependencyEdge(from_=StateId(from_), to=StateId(to)))


@dataclass
class ExecutionPlan:
    """A validated-on-demand DAG. `compiled` indexes it for the engines."""

    op_id: OpId
    graph: StateGraph

    def validate(self) -> None:
        _ = self.compiled

    @cached_property
    def compiled(self) -> CompiledPlan:
        return CompiledPlan.build(self)

    def canonical_order(self) -> list[StateId]:
        return list(self.compiled.order)

    def fingerprint(self) -> str:
        """SHA-256 over the plan's shape: op, states (canonical order, with meta) and edges.

        Two processes expand the same plan iff their fingerprints match; distributed
        workers refuse attempts of a plan their code would expand differently.
        """
        from mfm_dist.canonical import JsonValue, canonical_bytes_unchecked, sha256_hex
        from mfm_dist.state import StateMeta

        compiled = self.compiled
        dumped: dict[int, tuple[object, JsonValue]] = {}  # by meta object: states share metas

        def dump(meta: StateMeta) -> JsonValue:
            hit = dumped.get(id(meta))
            if hit is None:  # (the meta is kept alive with its dump, so ids are not reused)
                hit = dumped[id(meta)] = (meta, meta.model_dump(mode="json"))
            return hit[1]

        metas = {str(n.id): dump(n.state.meta()) for n in self.graph.states}
        shape = {
            "op_id": str(self.op_id),
            "states": [[str(s), metas[str(s)]] for s in compiled.order],
            "edges": sorted({(str(e.from_), str(e.to)) for e in self.graph.edges}),
        }
        # Hashed, never persisted: ids and metas are already validated, so skip the scans.
        return sha256_hex(canonical_bytes_unchecked(shape))


@dataclass
class CompiledPlan:
    """Index-based view of a valid plan, in canonical order.

    `reach` answers "is X an ancestor of Y" with a comparison or one lookup, in memory
    close to linear in the plan (a bitmask per state was quadratic for long chains:
    mfm_dist/reach.py).
    """

    order: list[StateId]
    position: dict[str, int]
    states: list[State]
    preds: list[list[int]]
    succs: list[list[int]]
    reach: Reachability

    @classmethod
    def build(cls, plan: ExecutionPlan) -> CompiledPlan:
        nodes = plan.graph.states
        if not nodes:
            raise InvalidPlan("plan has no states", {"reason": "empty_plan"})
        decl: dict[str, int] = {}
        for i, node in enumerate(nodes):
            sid = str(node.id)
            if not isinstance(node.id, StateId):
                try:
                    StateId(sid)
                except InvalidId:
                    raise InvalidPlan(
                        "a state id is not <machine>.<step>.<local>",
                        {"reason": "invalid_state_id", "state_id": shown(sid)},
                    ) from None
            if is_secret_string(sid):
                raise InvalidPlan(
                    "a state id is secret-shaped",
                    {"reason": "secret_state_id", "position": i},
                )
            if sid in decl:
                raise InvalidPlan(
                    f"duplicate state id {sid}", {"reason": "duplicate_state", "state_id": sid}
                )
            decl[sid] = i
        n = len(nodes)
        out_edges: list[list[int]] = [[] for _ in range(n)]
        indeg = [0] * n
        seen_edges: set[tuple[int, int]] = set()
        for edge in plan.graph.edges:
            for end in (edge.from_, edge.to):
                if str(end) not in decl:
                    raise InvalidPlan(
                        f"edge references missing state {end}",
                        {"reason": "missing_state", "state_id": str(end)},
                    )
            a, b = decl[str(edge.from_)], decl[str(edge.to)]
            if a == b:
                raise InvalidPlan(
                    f"cycle: {edge.from_} -> {edge.to}",
                    {"reason": "cycle", "cycle": [str(edge.from_)]},
                )
            if (a, b) in seen_edges:
                continue
            seen_edges.add((a, b))
            out_edges[a].append(b)
            indeg[b] += 1
        # Kahn's algorithm, seeded in declaration order, edges visited in declaration order.
        remaining = list(indeg)
        queue = deque(i for i in range(n) if remaining[i] == 0)
        order_decl: list[int] = []
        while queue:
            i = queue.popleft()
            order_decl.append(i)
            for j in out_edges[i]:
                remaining[j] -= 1
                if remaining[j] == 0:
                    queue.append(j)
        if len(order_decl) != n:
            cycle = _find_cycle(out_edges, {i for i in range(n) if remaining[i] > 0})
            names = [str(nodes[i].id) for i in cycle]
            raise InvalidPlan(
                "cycle: " + " -> ".join([*names, names[0]]), {"reason": "cycle", "cycle": names}
            )
        pos_of_decl = {d: p for p, d in enumerate(order_decl)}
        order = [nodes[d].id for d in order_decl]
        preds: list[list[int]] = [[] for _ in range(n)]
        succs: list[list[int]] = [[] for _ in range(n)]
        for a in range(n):
            for b in out_edges[a]:
                pa, pb = pos_of_decl[a], pos_of_decl[b]
                succs[pa].append(pb)
                preds[pb].append(pa)
        return cls(
            order=order,
            position={str(sid): p for p, sid in enumerate(order)},
            states=[nodes[d].state for d in order_decl],
            preds=preds,
            succs=succs,
            reach=Reachability(preds),
        )

    def __len__(self) -> int:
        return len(self.order)

    def is_ancestor(self, a: int, b: int) -> bool:
        return self.reach.is_ancestor(a, b)

    def ordered(self, a: int, b: int) -> bool:
        return self.is_ancestor(a, b) or self.is_ancestor(b, a)


def _find_cycle(out_edges: list[list[int]], candidates: set[int]) -> list[int]:
    """One cycle among the nodes Kahn's algorithm could not order, in edge direction.

    Every such node has a predecessor that is also unordered, so walking
    predecessors from any of them must revisit a node: that loop is a cycle.
    """
    preds: dict[int, int] = {}
    for a in sorted(candidates):
        for b in out_edges[a]:
            if b in candidates and b not in preds:
                preds[b] = a
    node = min(candidates)
    seen: dict[int, int] = {}
    walk: list[int] = []
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = preds[node]
    cycle = walk[seen[node] :]
    cycle.reverse()
    start = cycle.index(min(cycle))
    return cycle[start:] + cycle[:start]
