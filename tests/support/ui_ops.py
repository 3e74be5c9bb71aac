"""Test operations of the dashboard's tests (loaded with `--ops support.ui_ops`): `lattice`,
a dense plan for the drawn graph's limits; `stamped`, a state that binds facts and emits a
domain event (what a state's detail shows)."""

from __future__ import annotations

from typing import Any

from mfm_dist import FnState, Operation, OperationRegistry, RunConfig, StateGraph, StateMeta
from mfm_dist.context import StagedContext
from mfm_dist.ids import OpPath
from mfm_dist.io.base import IoProvider
from mfm_dist.state import EventRecorder

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


class Stamped(Operation):
    """One state: the time (a derived-key fact), a recorded value (fact `receipt`) and a
    domain event `stamped`."""

    op_id = "stamped"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: Any, run_config: RunConfig) -> StateGraph:
        async def stamp(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("at", await io.now_millis())
            ctx.set("receipt", await io.record_value("receipt", {"number": 42}))
            await rec.emit("stamped", {"ok": True})

        graph = StateGraph()
        graph.add(f"{op_path}.stamp", FnState(stamp, NOTHING))
        return graph


def register_operations(registry: OperationRegistry) -> None:
    registry.register(Lattice())
    registry.register(Stamped())
