"""Checks shared by the tests that run on a real cluster: waiting for a run, the embedded
reference run of the same input, the invariants every history must keep, and the gated test
operation's rendezvous files (`support.dist_ops`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from mfm_dist.config import RunConfig
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import prepare_run, store_manifest
from mfm_dist.engine.local import LocalEngine
from mfm_dist.events import EventEnvelope, RunCompleted, StateCompleted, StateEntered
from mfm_dist.ids import RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.stores.memory import InMemoryArtifactStore, InMemoryEventStore
from support.cluster import LocalCluster
from workers.runtime import Runtime
from workers.submit import wait_for_run

WAIT_S = 120.0

def registry() -> OperationRegistry:
    from support import dist_ops

    reg = OperationRegistry.default()
    dist_ops.register_operations(reg)
    return reg


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finished(cluster: LocalCluster, run_id: RunId, rt: Runtime) -> RunResult:
    try:
        return wait_for_run(str(run_id), WAIT_S, runtime=rt)
    except Exception:
        print(cluster.logs())
        raise


def embedded_final(target: str, run_input: object, config: RunConfig) -> str:
    events, artifacts = InMemoryEventStore(), InMemoryArtifactStore()
    reg = registry()
    prepared = prepare_run(reg, target, run_input, config)
    manifest_id = store_manifest(artifacts, prepared.manifest)
    result = LocalEngine(events, artifacts, reg).start(
        plan=prepared.plan,
        run_config=config,
        manifest=prepared.manifest,
        manifest_id=manifest_id,
        initial_context=prepared.initial_context,
    )
    assert result.phase == RunPhase.COMPLETED
    assert result.final_snapshot_id is not None
    return str(result.final_snapshot_id)


def assert_clean_history(envelopes: list[EventEnvelope]) -> RunHistory:
    """One completion per state, gap-free attempt numbers, exactly one RunCompleted."""
    completions = Counter(
        str(e.event.state_id) for e in envelopes if isinstance(e.event, StateCompleted)
    )
    assert completions and max(completions.values()) == 1
    attempts: dict[str, list[int]] = {}
    for e in envelopes:
        if isinstance(e.event, StateEntered):
            attempts.setdefault(str(e.event.state_id), []).append(e.event.attempt)
    for numbers in attempts.values():
        assert numbers == list(range(len(numbers)))
    assert sum(isinstance(e.event, RunCompleted) for e in envelopes) == 1
    assert isinstance(envelopes[-1].event, RunCompleted)
    return RunHistory.from_envelopes(envelopes[0].run_id, envelopes)


def gated_input(tmp_path: Path, items: int = 4) -> tuple[dict[str, object], Path]:
    gate = tmp_path / "gate"
    gate.mkdir()
    return {"items": items, "gate_dir": str(gate)}, gate


def slow_started(gate: Path, attempt: int = 0) -> int:
    """Wait until the gated state's attempt runs; the pid of the process running it."""
    found: list[Path] = []

    def check() -> bool:
        found[:] = list(gate.glob(f"started-{attempt}-*"))
        return bool(found)

    wait_until(check, f"the gated attempt {attempt} to start")
    return int(found[0].name.rsplit("-", 1)[1])


def events_of(rt: Runtime, run_id: RunId) -> list[EventEnvelope]:
    return rt.events.read_range(run_id)


def slow_id(run_id: RunId, rt: Runtime) -> str:
    op = str(events_of(rt, run_id)[0].event.op_id)  # type: ignore[union-attr]
    return f"{op}.main.slow"
