"""`io_demo`: an operation whose every non-deterministic input is a recorded fact.

Input: `{"quote_url": "http://127.0.0.1:8000/quote.json", "publish_url": "…/publish"
(optional), "program": "<path to an allowed program>" (optional)}`.

* `fetch` — GET the quote through the `http` transport (fact `quote`);
* `measure` — run an external program through the `exec` transport with the quote on
  stdin (fact `measurement`); defaults to the shipped `bin/measure_quote`;
* `stamp` — `now_millis()` and `random_bytes(8)` (derived-key facts);
* `publish` — a side effect (`ApplySideEffect`, idempotency key `publish`): POST the result
  once. The fact bound under `publish` proves it happened, so a retry, a redelivery or a
  resume never posts again; the same key is sent as an `Idempotency-Key` header so the
  receiver can also drop a repeat after a crash between its answer and the binding.
  Tagged `apply_side_effect`, so `mfm run … --dry-run` skips it.

Deployment settings: `MFM_HTTP_ALLOW_HOSTS=127.0.0.1:8000` and
`MFM_EXEC_ALLOW=<directory of the program>`.
"""

from __future__ import annotations

from pathlib import Path

from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.context import StagedContext
from mfm_dist.errors import InvalidInput
from mfm_dist.examples.config import check_config
from mfm_dist.ids import OpPath
from mfm_dist.io.base import IoCall, IoProvider
from mfm_dist.operations import Operation
from mfm_dist.plan import StateGraph
from mfm_dist.state import (
    EventRecorder,
    FnState,
    IdempotencyKey,
    SideEffects,
    StateMeta,
)

DEFAULT_PROGRAM = Path(__file__).with_name("bin") / "measure_quote"


def _string(config: JsonValue, key: str, default: str | None) -> str | None:
    value = config.get(key, default) if isinstance(config, dict) else default
    if value is not None and not isinstance(value, str):
        raise InvalidInput("op_config_invalid", f"'{key}' must be a string")
    return value


class IoDemo(Operation):
    op_id = "io_demo"
    op_version = "1"
    description = "HTTP, exec, time and randomness as recorded facts; a once-only side effect"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        op_config = check_config(self.op_id, op_config, {"quote_url", "publish_url", "program"})
        quote_url = _string(op_config, "quote_url", None)
        if quote_url is None:
            raise InvalidInput("op_config_invalid", "io_demo needs 'quote_url'")
        publish_url = _string(op_config, "publish_url", None)
        program = _string(op_config, "program", str(DEFAULT_PROGRAM))

        async def fetch(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            request = {"method": "GET", "url": quote_url}
            result = await io.call(IoCall(namespace="http", request=request, fact_key="quote"))
            ctx.set("quote", result.response["body"])

        async def measure(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            request = {
                "kind": "run_program_v1",
                "program_path": program,
                "argv": [],
                "stdin_json": ctx.get("quote"),
                "timeout_ms": 10_000,
                "env": {},
            }
            call = IoCall(namespace="exec", request=request, fact_key="measurement")
            ctx.set("measurement", (await io.call(call)).response)

        async def stamp(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("stamped_at_ms", await io.now_millis())
            ctx.set("nonce", (await io.random_bytes(8)).hex())

        async def publish(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            payload = {"quote": ctx.get("quote"), "measurement": ctx.get("measurement")}
            if publish_url is None:
                receipt = await io.record_value("publish", {"published": False, "payload": payload})
                ctx.set("publish_receipt", {"fact": receipt})
                return
            request = {
                "method": "POST",
                "url": publish_url,
                "json": payload,
                "headers": {"Idempotency-Key": f"{rec.run_id}/publish"},
            }
            result = await io.call(IoCall(namespace="http", request=request, fact_key="publish"))
            ctx.set("publish_receipt", result.response["body"])
            await rec.emit("published", {"replayed": result.replayed})

        graph = StateGraph()
        a = graph.add(
            f"{op_path}.fetch",
            FnState(fetch, StateMeta(tags=["fetch_data"], side_effects=SideEffects.READ_ONLY_IO)),
        )
        b = graph.add(
            f"{op_path}.measure",
            FnState(measure, StateMeta(tags=["execute"], side_effects=SideEffects.READ_ONLY_IO)),
        )
        c = graph.add(f"{op_path}.stamp", FnState(stamp, StateMeta(tags=["impure"])))
        d = graph.add(
            f"{op_path}.publish",
            FnState(
                publish,
                StateMeta(
                    tags=["apply_side_effect"],
                    side_effects=SideEffects.APPLY_SIDE_EFFECT,
                    idempotency=IdempotencyKey(value="publish"),
                ),
            ),
        )
        graph.edge(a, b)
        graph.edge(b, d)
        graph.edge(c, d)
        return graph
