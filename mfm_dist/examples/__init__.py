"""Example operations shipped with mfm-dist and registered by default.

* `fanout_demo` — input `{"items": N}`: N independent states each compute a value
  from their item and write their own key; a join state aggregates them.
* `etl_demo` — a pipeline of three ops (`extract_numbers`, `square_numbers`,
  `summarize_numbers`) flattened into one run.
* `chain_demo` — input `{"states": N}`: N states in a chain, each bumping a counter.
* `io_demo` — HTTP, exec, time and randomness recorded as facts, and a once-only
  side effect (see `mfm_dist.examples.io_demo`).
* `flaky_demo` — a state that fails retryably on its first attempt; run it with
  `--max-attempts 2` (or more) to watch the retry succeed.
* `partition_demo` — one partition of a backfill: takes any JSON object (e.g.
  `{"day": "2026-01-01"}`), records a digest of it; `"fail": true` fails it for good
  (`partition_failed`), `"sleep_ms": N` makes it take N ms.
"""

from __future__ import annotations

import hashlib

from mfm_dist.canonical import JsonValue, canonical_bytes_unchecked
from mfm_dist.config import RunConfig
from mfm_dist.context import StagedContext
from mfm_dist.errors import InvalidInput, StateError
from mfm_dist.examples.config import check_config
from mfm_dist.examples.io_demo import IoDemo
from mfm_dist.ids import OpPath
from mfm_dist.io.base import IoProvider
from mfm_dist.operations import Operation, OperationRegistry, Pipeline, PipelineStep
from mfm_dist.plan import StateGraph
from mfm_dist.state import EventRecorder, FnState, StateMeta, StateOutcome

MAX_DEMO_ITEMS = 100_000


def _int_config(config: JsonValue, key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default) if isinstance(config, dict) else default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput("op_config_invalid", f"'{key}' must be an integer in [{low}, {high}]")
    return value


def item_value(item: int) -> int:
    """A deterministic, non-trivial value per item (first 6 bytes of a SHA-256)."""
    return int.from_bytes(hashlib.sha256(f"item-{item}".encode()).digest()[:6], "big")


class FanOutDemo(Operation):
    op_id = "fanout_demo"
    op_version = "1"
    description = "N parallel item states, then a join that aggregates their values"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        op_config = check_config(self.op_id, op_config, {"items", "payload_bytes"})
        items = _int_config(op_config, "items", 10, 1, MAX_DEMO_ITEMS)
        payload_bytes = _int_config(op_config, "payload_bytes", 0, 0, 1_048_576)
        width = max(4, len(str(items - 1)))
        graph = StateGraph()
        join = op_path.state_id("join")
        keys = []
        for item in range(items):
            key = f"item_{item:0{width}d}"
            keys.append(key)
            sid = graph.add(f"{op_path}.{key}", _item_state(item, key, payload_bytes))
            graph.edge(sid, join)
        graph.add(join, _join_state(keys))
        # The join is declared last but its edges are declared first: canonical order
        # still puts it after every item (Kahn's algorithm).
        return graph


COMPUTE_META = StateMeta(tags=["compute"])
"""One meta shared by every item (metas are immutable): a plan of 100,000 items then holds
one, not 100,000 — every worker keeps the plan of each run it serves."""


def _item_state(item: int, key: str, payload_bytes: int) -> FnState:
    async def compute(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
        entry: dict[str, JsonValue] = {"item": item, "value": item_value(item)}
        if payload_bytes:
            entry["payload"] = "x" * payload_bytes
        ctx.set(key, entry)

    return FnState(compute, COMPUTE_META)


def _join_state(keys: list[str]) -> FnState:
    async def join(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
        total = 0
        for key in keys:
            entry = ctx.get(key)
            total = (total + int(entry["value"])) % (2**53 - 1)
        ctx.set("summary", {"items": len(keys), "total": total})
        await rec.emit("fanout_joined", {"items": len(keys)})

    return FnState(join, StateMeta(tags=["report"]))


class ChainDemo(Operation):
    op_id = "chain_demo"
    op_version = "1"
    description = "N states in a chain, each adding its position to a running total"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        op_config = check_config(self.op_id, op_config, {"states"})
        states = _int_config(op_config, "states", 10, 1, MAX_DEMO_ITEMS)
        width = max(4, len(str(states - 1)))
        graph = StateGraph()
        previous = None
        for position in range(states):
            sid = graph.add(f"{op_path}.step_{position:0{width}d}", _chain_state(position))
            if previous is not None:
                graph.edge(previous, sid)
            previous = sid
        return graph


def _chain_state(position: int) -> FnState:
    async def bump(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.set("total", int(ctx.get("total", 0)) + position)
        ctx.set("last_step", position)

    return FnState(bump, COMPUTE_META)


class ExtractNumbers(Operation):
    op_id = "extract_numbers"
    op_version = "1"
    description = "write the numbers 1..count to `numbers`"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        op_config = check_config(self.op_id, op_config, {"count"})
        count = _int_config(op_config, "count", 5, 0, 10_000)

        async def extract(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("numbers", list(range(1, count + 1)))

        graph = StateGraph()
        graph.add(f"{op_path}.extract", FnState(extract, StateMeta(tags=["fetch_data"])))
        return graph


class SquareNumbers(Operation):
    op_id = "square_numbers"
    op_version = "1"
    description = "square every number in `numbers` into `squares`"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        async def square(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("squares", [n * n for n in ctx.get("numbers")])

        graph = StateGraph()
        graph.add(f"{op_path}.square", FnState(square, StateMeta(tags=["compute"])))
        return graph


class SummarizeNumbers(Operation):
    op_id = "summarize_numbers"
    op_version = "1"
    description = "sum `squares` into `report`, then drop the intermediate `numbers`"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        async def total(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            squares = ctx.get("squares")
            ctx.set("report", {"count": len(squares), "sum_of_squares": sum(squares)})

        async def tidy(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.delete("numbers")
            await rec.emit("report_ready", {"keys": sorted(ctx.keys())})

        graph = StateGraph()
        a = graph.add(f"{op_path}.total", FnState(total, StateMeta(tags=["compute"])))
        b = graph.add(f"{op_path}.tidy", FnState(tidy, StateMeta(tags=["report"])))
        graph.edge(a, b)
        return graph


class FlakyDemo(Operation):
    op_id = "flaky_demo"
    op_version = "1"
    description = "a state that fails retryably on its first attempt"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        async def prepare(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("prepared", True)

        async def flaky(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> StateOutcome:
            if rec.attempt == 0:
                raise StateError(
                    "upstream_unavailable",
                    "upstream did not answer (simulated); retry later",
                    retryable=True,
                )
            ctx.set("result", {"succeeded_on_attempt": rec.attempt})
            return StateOutcome()

        graph = StateGraph()
        a = graph.add(f"{op_path}.prepare", FnState(prepare, StateMeta(tags=["config"])))
        b = graph.add(f"{op_path}.call_upstream", FnState(flaky, StateMeta(tags=["fetch_data"])))
        graph.edge(a, b)
        return graph


MAX_DEMO_SLEEP_MS = 600_000


class PartitionDemo(Operation):
    op_id = "partition_demo"
    op_version = "1"
    description = "one backfill partition: digest its input; 'fail': true fails it for good"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        if not isinstance(op_config, dict):
            raise InvalidInput("op_config_invalid", f"{self.op_id} takes a JSON object as input")
        fail = op_config.get("fail", False)
        if not isinstance(fail, bool):
            raise InvalidInput("op_config_invalid", "'fail' must be true or false")
        sleep_ms = _int_config(op_config, "sleep_ms", 0, 0, MAX_DEMO_SLEEP_MS)

        async def process(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            if sleep_ms:
                await io.sleep_ms(sleep_ms)
            if fail:
                raise StateError("partition_failed", "the partition asked to fail", retryable=False)
            digest = hashlib.sha256(canonical_bytes_unchecked(ctx.get("input"))).hexdigest()
            ctx.set("result", {"digest": digest[:16]})

        graph = StateGraph()
        graph.add(f"{op_path}.process", FnState(process, StateMeta(tags=["compute"])))
        return graph


ETL_PIPELINE = Pipeline(
    machine_id="etl_demo",
    pipeline_version="1",
    steps=[
        PipelineStep(
            step_id="extract", op_id="extract_numbers", op_version="1", op_config={"count": 10}
        ),
        PipelineStep(step_id="transform", op_id="square_numbers", op_version="1"),
        PipelineStep(step_id="load", op_id="summarize_numbers", op_version="1"),
    ],
)


def register_operations(registry: OperationRegistry) -> None:
    ops: tuple[Operation, ...] = (
        FanOutDemo(),
        ChainDemo(),
        ExtractNumbers(),
        SquareNumbers(),
        SummarizeNumbers(),
        FlakyDemo(),
        PartitionDemo(),
        IoDemo(),
    )
    for op in ops:
        registry.register(op)
    registry.register_pipeline(ETL_PIPELINE)
