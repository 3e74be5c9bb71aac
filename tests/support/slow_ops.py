"""Test operations module (loaded with `--ops support.slow_ops` /
`MFM_OPERATIONS=support.slow_ops`)."""

from __future__ import annotations

import time
from typing import Any

from mfm_dist import FnState, Operation, OperationRegistry, RunConfig, StateGraph, StateMeta
from mfm_dist.ids import OpPath


class SlowFanOut(Operation):
    """`{"items": N, "sleep_ms": M}`: N item states that each sleep M ms, then a join."""

    op_id = "slow_fanout"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: Any, run_config: RunConfig) -> StateGraph:
        items = int(op_config.get("items", 20))
        sleep_s = int(op_config.get("sleep_ms", 50)) / 1000
        graph = StateGraph()
        join = op_path.state_id("join")
        keys = [f"item_{i:04d}" for i in range(items)]
        for key in keys:

            def work(ctx, io, rec, key=key):  # type: ignore[no-untyped-def]
                time.sleep(sleep_s)  # blocking on purpose: runs on the attempt's own thread
                ctx.set(key, len(key))

            sid = graph.add(f"{op_path}.{key}", FnState(work, StateMeta(tags=["compute"])))
            graph.edge(sid, join)

        def total(ctx, io, rec):  # type: ignore[no-untyped-def]
            ctx.set("total", sum(ctx.get(k) for k in keys))

        graph.add(join, FnState(total))
        return graph


def register_operations(registry: OperationRegistry) -> None:
    registry.register(SlowFanOut())
