"""Test operations for the distributed tests, loaded by workers via
`MFM_OPERATIONS=support.dist_ops`.

* `gated_demo` — input `{"items": N, "gate_dir": path}`: N item states and one `slow`
  state that records its process id in `gate_dir` (`started-<attempt>-<pid>`) and blocks
  until the file `gate_dir/open` exists; then a join. Lets a test kill the worker running
  an attempt, or restart infrastructure, while an attempt is in flight.
* `shape_demo` — two states; a worker started with `MFM_TEST_PLAN_VARIANT=1` expands a
  third one, so its plan fingerprint differs (`plan_mismatch`).
* `poison_demo` — one state whose handler hits a permanent storage fault every time.
* `counted_calls` — one state making two calls through the `counting` transport
  (registered by `register_transports`); `COUNTED` records every call, and the hooks in
  `AFTER_CALL` run after each (a test steals the attempt's lease there).
* `hang_demo` — a state with a timeout whose first attempts never return.
* `backoff_demo` — one state that fails retryably once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from mfm_dist.canonical import JsonValue
from mfm_dist.config import Duration, RunConfig
from mfm_dist.context import StagedContext
from mfm_dist.errors import Corruption, MfmError, StateError
from mfm_dist.ids import OpPath
from mfm_dist.io.base import IoCall, IoProvider
from mfm_dist.io.router import TransportRegistry
from mfm_dist.operations import Operation, OperationRegistry
from mfm_dist.plan import StateGraph
from mfm_dist.state import EventRecorder, FnState, StateMeta

GATE_TIMEOUT_S = 120.0


class GatedDemo(Operation):
    op_id = "gated_demo"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        assert isinstance(op_config, dict)
        items = int(op_config.get("items", 4))
        gate_dir = str(op_config["gate_dir"])
        graph = StateGraph()
        join = op_path.state_id("join")
        keys = []
        for i in range(items):
            key = f"item_{i:04d}"
            keys.append(key)
            sid = graph.add(f"{op_path}.{key}", _item(key, i))
            graph.edge(sid, join)
        slow = graph.add(f"{op_path}.slow", _slow(gate_dir))
        graph.edge(slow, join)
        graph.add(join, _join([*keys, "slow"]))
        return graph


def _item(key: str, i: int) -> FnState:
    async def run(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.set(key, {"item": i, "square": i * i})

    return FnState(run, StateMeta(tags=["compute"]))


def _slow(gate_dir: str) -> FnState:
    async def run(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
        gate = Path(gate_dir)
        (gate / f"started-{rec.attempt}-{os.getpid()}").write_text("")
        waited = 0.0
        while not (gate / "open").exists():
            if waited > GATE_TIMEOUT_S:
                raise TimeoutError("gate never opened")
            await asyncio.sleep(0.05)
            waited += 0.05
        ctx.set("slow", {"done": True})

    return FnState(run, StateMeta(tags=["compute"]))


def _join(keys: list[str]) -> FnState:
    async def run(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
        ctx.set("joined", sorted(k for k in keys if ctx.get(k) is not None))

    return FnState(run, StateMeta(tags=["report"]))


class ShapeDemo(Operation):
    op_id = "shape_demo"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        graph = StateGraph()
        names = ["first", "second"]
        if os.environ.get("MFM_TEST_PLAN_VARIANT") == "1":
            names.append("third")
        previous = None
        for name in names:
            sid = graph.add(f"{op_path}.{name}", _item(name, len(name)))
            if previous is not None:
                graph.edge(previous, sid)
            previous = sid
        return graph


class PoisonDemo(Operation):
    op_id = "poison_demo"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        async def run(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            raise Corruption("artifact_content_address_mismatch", "tampered payload")

        graph = StateGraph()
        graph.add(f"{op_path}.bad", FnState(run, StateMeta(tags=["compute"])))
        return graph


class ClashDemo(Operation):
    """`clash_demo` — two unordered states that both write `shared` (a merge conflict when
    run with fan-out)."""

    op_id = "clash_demo"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        graph = StateGraph()
        for i, name in enumerate(["a", "b"]):
            graph.add(f"{op_path}.{name}", _item("shared", i))
        return graph


COUNTED: list[JsonValue] = []
AFTER_CALL: list[Callable[[], None]] = []


class Counting:
    """A transport that counts its calls (the external effect of `counted_calls`)."""

    def call(self, request: JsonValue) -> JsonValue:
        COUNTED.append(request)
        for hook in list(AFTER_CALL):
            hook()
        return {"ok": len(COUNTED)}


class CountedCalls(Operation):
    op_id = "counted_calls"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        async def run(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            for n in range(2):
                call = IoCall(namespace="counting.v1", request={"n": n}, fact_key=f"count:{n}")
                ctx.set(f"call_{n}", (await io.call(call)).response)

        graph = StateGraph()
        graph.add(f"{op_path}.pay", FnState(run, StateMeta(tags=["apply_side_effect"])))
        return graph


class HangDemo(Operation):
    """`hang_demo` — input `{"timeout_ms": T, "hang_attempts": K, "blocking": bool}`: a
    `prepare` state, then `hang` (timeout T) whose first K attempts never return — a blocking
    `time.sleep` loop, or an `await` loop that cancellation can stop — then succeeds. While
    `LATE_CALL` holds True, a hanging handler tries one transport call after its deadline
    and records what happened in `LATE_RESULTS`."""

    op_id = "hang_demo"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        assert isinstance(op_config, dict)
        timeout_ms = int(op_config.get("timeout_ms", 300))
        hang_attempts = int(op_config.get("hang_attempts", 1))
        blocking = bool(op_config.get("blocking", True))

        async def prepare(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("prepared", True)

        async def hang(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            if rec.attempt < hang_attempts:
                start = time.monotonic()
                late_call = bool(LATE_CALL)
                while time.monotonic() - start < HANG_S:
                    if blocking:
                        time.sleep(0.05)
                    else:
                        await asyncio.sleep(0.05)
                    if late_call and time.monotonic() - start > timeout_ms / 1000 + 0.3:
                        late_call = False
                        call = IoCall(namespace="counting.v1", request={"late": rec.attempt})
                        try:
                            await io.call(call)
                            LATE_RESULTS.append("called")
                        except MfmError as exc:
                            LATE_RESULTS.append(exc.info.code)
            ctx.set("hang", {"attempt": rec.attempt})

        graph = StateGraph()
        a = graph.add(f"{op_path}.prepare", FnState(prepare, StateMeta(tags=["compute"])))
        meta = StateMeta(tags=["compute"], timeout=Duration.from_millis(timeout_ms))
        b = graph.add(f"{op_path}.hang", FnState(hang, meta))
        graph.edge(a, b)
        return graph


HANG_S = 600.0
LATE_CALL: list[bool] = []
LATE_RESULTS: list[str] = []


class CancelDemo(Operation):
    """`cancel_demo` — three independent states and a join: `stuck` blocks in plain Python
    (ignoring cancellation) until `CANCEL_RELEASE` is set, `plain` sets a value, `flaky`
    fails retryably on attempt 0; the run config gives the backoff."""

    op_id = "cancel_demo"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        async def stuck(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            STUCK_ENTERED.append(rec.attempt)
            while not CANCEL_RELEASE:
                time.sleep(0.02)
            ctx.set("stuck", True)

        async def plain(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("plain", True)

        async def flaky(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            if rec.attempt == 0:
                raise StateError("upstream_unavailable", "try again", retryable=True)
            ctx.set("flaky", True)

        async def join(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            ctx.set("joined", True)

        graph = StateGraph()
        end = graph.add(f"{op_path}.join", FnState(join))
        for name, fn in (("stuck", stuck), ("plain", plain), ("flaky", flaky)):
            graph.edge(graph.add(f"{op_path}.{name}", FnState(fn)), end)
        return graph


STUCK_ENTERED: list[int] = []
CANCEL_RELEASE: list[bool] = []


class BackoffDemo(Operation):
    """`backoff_demo` — one state failing retryably on attempt 0 (the run config gives the
    retry policy and backoff)."""

    op_id = "backoff_demo"
    op_version = "1"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        async def flaky(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
            if rec.attempt == 0:
                raise StateError("upstream_unavailable", "try again", retryable=True)
            ctx.set("ok", rec.attempt)

        graph = StateGraph()
        graph.add(f"{op_path}.flaky", FnState(flaky, StateMeta(tags=["compute"])))
        return graph


def register_operations(registry: OperationRegistry) -> None:
    registry.register(GatedDemo())
    registry.register(ShapeDemo())
    registry.register(PoisonDemo())
    registry.register(ClashDemo())
    registry.register(CountedCalls())
    registry.register(HangDemo())
    registry.register(BackoffDemo())
    registry.register(CancelDemo())


def register_transports(transports: TransportRegistry) -> None:
    transports.register("counting", Counting())


def _install_fault_hooks() -> None:
    """`DIST_OPS_FAULTS=<dir>` (set on a test cluster's workers): when the file `<dir>/arm`
    exists, the next attempt process to take a lease consumes it and is SIGKILLed right
    after taking the lease, before `StateEntered` — with `arm` containing `worker`, its
    parent (the whole Celery worker) first. `<dir>/died-<pid>` records when it happened."""
    fault_dir = os.environ.get("DIST_OPS_FAULTS")
    if not fault_dir:
        return
    import signal

    from workers import leases

    original = leases.Coordination.acquire_lease
    if getattr(original, "_dist_ops_hook", False):
        return

    def acquire_then_die(
        self: leases.Coordination, run_id: str, state_id: str, attempt: int, ttl_ms: int
    ) -> str | None:
        value = original(self, run_id, state_id, attempt, ttl_ms)
        arm = Path(fault_dir) / "arm"
        taken = Path(fault_dir) / f"taken-{os.getpid()}"
        if value is None:
            return value
        try:
            arm.rename(taken)
        except OSError:
            return value  # not armed, or another process took it
        mode = taken.read_text().strip()
        (Path(fault_dir) / f"died-{os.getpid()}").write_text(f"{time.time()}\n{state_id}\n")
        if mode == "worker":
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
        return value

    acquire_then_die._dist_ops_hook = True  # type: ignore[attr-defined]
    leases.Coordination.acquire_lease = acquire_then_die  # type: ignore[method-assign]


_install_fault_hooks()
