"""Test operations for the drawn run graph (loaded with `--ops support.graph_ops`)."""

from __future__ import annotations

from typing import Any

from mfm_dist import FnState, Operation, OperationRegistry, RunConfig, StateGraph, StateMeta
from mfm_dist.ids import OpPath

NOTHING = StateMeta(tags=["compute"])


class Lattice(Operation):
    """`{"levels": L, "width": W}`: L levels of W states, each state depending on every
    state of the level before it — a dense plan, to reach the drawing's limits."""

    op_id = "lattice"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: Any, run_config: RunConfig) -> StateGraph:
        levels, width = int(op_config["levels"]), int(op_config["width"])
        graph = StateGraph()
        previous: list[str] = []
        for level in range(levels):
            current = []
            for k in range(width):
                sid = graph.add(f"{op_path}.l{level:02d}_s{k:02d}", FnState(_nothing, NOTHING))
                for before in previous:
                    graph.edge(before, sid)
                current.append(str(sid))
            previous = current
        return graph


def _nothing(ctx: Any, io: Any, rec: Any) -> None:
    return None


def register_operations(registry: OperationRegistry) -> None:
    registry.register(Lattice())
