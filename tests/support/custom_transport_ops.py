"""Test module: an operation that uses a user-registered transport (`register_transports`)."""

from __future__ import annotations

from typing import Any

from mfm_dist import FnState, IoCall, Operation, OperationRegistry, RunConfig, StateGraph
from mfm_dist.ids import OpPath
from mfm_dist.io.router import TransportRegistry

CALLS: list[Any] = []


class Pricing:
    """A user transport: any object with `call(request) -> JSON` (sync or async)."""

    def call(self, request: Any) -> Any:
        CALLS.append(request)
        return {"sku": request["sku"], "price_cents": 1999}


class PriceLookup(Operation):
    op_id = "price_lookup"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: Any, run_config: RunConfig) -> StateGraph:
        async def lookup(ctx, io, rec):  # type: ignore[no-untyped-def]
            call = IoCall(namespace="pricing.v1", request={"sku": "A-1"}, fact_key="price:A-1")
            ctx.set("price", (await io.call(call)).response)

        graph = StateGraph()
        graph.add(f"{op_path}.lookup", FnState(lookup))
        return graph


def register_operations(registry: OperationRegistry) -> None:
    registry.register(PriceLookup())


def register_transports(transports: TransportRegistry) -> None:
    transports.register("pricing", Pricing())  # serves "pricing" and "pricing.*"
