"""The soak harness's workload (`scripts/soak.py`), loaded by the cluster's workers via
`MFM_OPERATIONS=support.dist_ops,support.soak_ops`.

* `soak_demo` — input `{"shape", "size", "seed", "slow", "sleep_ms", "blocking", "flaky",
  "flaky_failures", "fail"}`. `design(input)` derives the whole plan from it, so every
  worker re-derives the same DAG and the same behaviours:

  - `shape`: `chain` (a line), `diamond` (a source, `size` parallel middles, a sink; with
    an odd `seed`, a second diamond hangs off the first sink), `wide` (`size` independent
    leaves and a join) or `dag` (each state after the first gets one or two predecessors
    among the earlier ones, chosen by `seed`);
  - `slow` states sleep `sleep_ms` per attempt (`blocking`: `time.sleep`, else `await`);
  - `flaky` states fail retryably (`soak_flaky`) on their attempts numbered below
    `flaky_failures`: the run config must allow `flaky_failures + 1` attempts. Attempt
    numbers also count orphan recoveries, so a crash can only make a flaky state fail
    fewer times, never more — the outcome does not depend on faults;
  - `fail`: `none`, `fatal` (one state fails with `soak_fatal`, not retryable) or
    `exhaust` (one state fails retryably with `soak_exhausted` on every attempt, so it
    fails for good once the retry policy has no attempts left). Either way the run is
    meant to end `Failed`, the first failing state in canonical order being the reason.

  Every state writes one key `v_<local id>`: a hash of its id and of its predecessors'
  keys. It reads nothing else, and no two states write the same key, so the plan is
  conflict-free and a fan-out run ends with the same final snapshot id as a sequential
  one (README, "Execution modes").

`set_sleeps(False)` turns the sleeps off in the calling process only (the harness's
embedded reference runs: a sleep writes nothing, so the snapshots are the same).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field

from mfm_dist.canonical import JsonValue, canonical_bytes
from mfm_dist.config import RunConfig
from mfm_dist.context import StagedContext
from mfm_dist.errors import InvalidInput, StateError
from mfm_dist.ids import OpPath
from mfm_dist.io.base import IoProvider
from mfm_dist.operations import Operation, OperationRegistry
from mfm_dist.plan import StateGraph
from mfm_dist.state import EventRecorder, FnState, StateMeta

SHAPES = ("chain", "diamond", "wide", "dag")
FAILS = ("none", "fatal", "exhaust")
FATAL_CODE = "soak_fatal"
EXHAUST_CODE = "soak_exhausted"
FLAKY_CODE = "soak_flaky"
MAX_SIZE = 64
MAX_SLEEP_MS = 10_000
_KEYS = {
    "shape", "size", "seed", "slow", "sleep_ms", "blocking", "flaky", "flaky_failures", "fail",
}  # fmt: skip
_SLEEPS: list[bool] = [True]


def set_sleeps(enabled: bool) -> None:
    """Turn the `slow` states' sleeps on or off in this process."""
    _SLEEPS[0] = enabled


@dataclass(frozen=True)
class StateSpec:
    local: str
    preds: tuple[str, ...]
    sleep_ms: int = 0
    blocking: bool = False
    flaky_failures: int = 0
    fail: str = "none"


@dataclass(frozen=True)
class SoakDesign:
    states: tuple[StateSpec, ...]
    fail: str = "none"
    extra: dict[str, JsonValue] = field(default_factory=dict)

    @property
    def failing(self) -> list[str]:
        """Local ids of the states meant to fail for good (declaration order)."""
        return [s.local for s in self.states if s.fail != "none"]

    def expected_code(self) -> str | None:
        return {"fatal": FATAL_CODE, "exhaust": EXHAUST_CODE}.get(self.fail)

    def designed_seconds(self, backoff_ms: int) -> tuple[float, float]:
        """(longest single state, all states) of designed handler time: its sleeps over
        every attempt it is meant to make (1 + flaky failures) plus the backoffs between."""
        per = []
        for s in self.states:
            tries = 1 + s.flaky_failures
            per.append((tries * s.sleep_ms + (tries - 1) * backoff_ms) / 1000.0)
        return max(per, default=0.0), sum(per)


def _int(config: dict[str, JsonValue], key: str, default: int, low: int, high: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput("op_config_invalid", f"soak_demo: '{key}' must be in [{low}, {high}]")
    return value


def design(op_config: JsonValue) -> SoakDesign:
    """The plan `soak_demo` expands for `op_config` (pure: same input, same design)."""
    if not isinstance(op_config, dict):
        raise InvalidInput("op_config_invalid", "soak_demo takes a JSON object as input")
    unknown = sorted(set(op_config) - _KEYS)
    if unknown:
        raise InvalidInput("op_config_invalid", f"soak_demo does not know {unknown}")
    shape = op_config.get("shape", "chain")
    fail = op_config.get("fail", "none")
    if shape not in SHAPES or fail not in FAILS:
        raise InvalidInput("op_config_invalid", "soak_demo: unknown 'shape' or 'fail'")
    size = _int(op_config, "size", 4, 1, MAX_SIZE)
    seed = _int(op_config, "seed", 0, 0, 2**53 - 1)
    n_slow = _int(op_config, "slow", 0, 0, MAX_SIZE)
    sleep_ms = _int(op_config, "sleep_ms", 0, 0, MAX_SLEEP_MS)
    n_flaky = _int(op_config, "flaky", 0, 0, MAX_SIZE)
    flaky_failures = _int(op_config, "flaky_failures", 1, 0, 8)
    blocking = bool(op_config.get("blocking", False))
    rng = random.Random(seed)

    preds: dict[str, list[str]] = {}

    def add(local: str, *before: str) -> str:
        preds[local] = list(before)
        return local

    if shape == "chain":
        prev: list[str] = []
        for i in range(size):
            prev = [add(f"n{i:02d}", *prev)]
    elif shape == "wide":
        leaves = [add(f"leaf{i:02d}") for i in range(size)]
        add("join", *leaves)
    elif shape == "diamond":
        top = add("src")
        for d in range(1 + seed % 2):
            mids = [add(f"d{d}_mid{i:02d}", top) for i in range(size)]
            top = add(f"d{d}_sink", *mids)
    else:  # dag
        names: list[str] = []
        for i in range(size):
            name = f"n{i:02d}"
            before = rng.sample(names, k=min(len(names), rng.randint(1, 2))) if names else []
            add(name, *sorted(before))
            names.append(name)
    order = list(preds)
    slow = set(rng.sample(order, k=min(n_slow, len(order))))
    flaky = set(rng.sample(order, k=min(n_flaky, len(order))))
    failing = rng.choice(order) if fail != "none" else None
    states = tuple(
        StateSpec(
            local=name,
            preds=tuple(preds[name]),
            sleep_ms=sleep_ms if name in slow else 0,
            blocking=blocking,
            flaky_failures=flaky_failures if name in flaky and name != failing else 0,
            fail=fail if name == failing else "none",
        )
        for name in order
    )
    return SoakDesign(states=states, fail=fail)


def _value(local: str, inputs: list[JsonValue]) -> int:
    digest = hashlib.sha256(local.encode() + b"|" + canonical_bytes(inputs)).digest()
    return int.from_bytes(digest[:6], "big")


def _state(spec: StateSpec) -> FnState:
    async def run(ctx: StagedContext, io: IoProvider, rec: EventRecorder) -> None:
        if spec.sleep_ms and _SLEEPS[0]:
            if spec.blocking:
                time.sleep(spec.sleep_ms / 1000.0)
            else:
                await asyncio.sleep(spec.sleep_ms / 1000.0)
        if spec.fail == "fatal":
            raise StateError(FATAL_CODE, f"{spec.local} fails on purpose", retryable=False)
        if spec.fail == "exhaust":
            raise StateError(EXHAUST_CODE, f"{spec.local} fails every attempt", retryable=True)
        if rec.attempt < spec.flaky_failures:
            raise StateError(FLAKY_CODE, f"{spec.local}: flaky attempt", retryable=True)
        inputs = [ctx.get(f"v_{p}") for p in spec.preds]
        value = _value(spec.local, inputs)
        ctx.set(f"v_{spec.local}", {"value": value, "preds": len(spec.preds)})
        if value % 3 == 0:
            await rec.emit("soak_step", {"state": spec.local, "value": value})

    return FnState(run, StateMeta(tags=["compute"]))


class SoakDemo(Operation):
    op_id = "soak_demo"
    op_version = "1"
    description = "the soak harness's random DAG: slow, flaky and failing states by design"

    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        plan = design(op_config)
        graph = StateGraph()
        for spec in plan.states:
            graph.add(f"{op_path}.{spec.local}", _state(spec))
        for spec in plan.states:
            for p in spec.preds:
                graph.edge(op_path.state_id(p), op_path.state_id(spec.local))
        return graph


def register_operations(registry: OperationRegistry) -> None:
    registry.register(SoakDemo())
