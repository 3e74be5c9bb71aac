#!/usr/bin/env python3
"""Benchmark the embedded engine against the durable writes it cannot avoid.

Measured in one process, on the same machine and disk:

* baseline — the raw durable writes a run of N states needs at minimum: for each
  state, two SQLite appends (StateEntered, StateCompleted) and one snapshot put
  into the file artifact store, done directly on the stores;
* the engine on the embedded stores: a 1,000-state fan-out/join (`fanout_demo`,
  `--fan-out 16`) and a 1,000-state chain (`chain_demo`, sequential);
* the same runs on in-memory stores, to isolate the engine's own overhead;
* a cProfile of the embedded fan-out run (top functions by cumulative time).

Usage: .venv/bin/python scripts/bench_engine.py [--states 1000] [--fan-out 16] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

from mfm_dist import (
    ArtifactKind,
    FanOutJoin,
    LocalEngine,
    OperationRegistry,
    RunConfig,
    RunId,
    canonical_bytes,
    prepare_run,
    store_manifest,
)
from mfm_dist.artifacts import ArtifactStore
from mfm_dist.events import EventDraft, RunStarted, StateCompleted, StateEntered
from mfm_dist.stores import InMemoryArtifactStore, InMemoryEventStore
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.sqlite import SqliteEventStore


def embedded(root: Path) -> tuple[EventStore, ArtifactStore]:
    return SqliteEventStore(root / "events.sqlite3"), FileArtifactStore(root / "artifacts")


def baseline(root: Path, states: int) -> float:
    """Seconds for the minimum durable writes of a run of `states` states."""
    events, artifacts = embedded(root)
    run_id = RunId.mint()
    aid = artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, b"{}")
    started = RunStarted(op_id="bench", manifest_id=aid, initial_snapshot_id=aid)
    events.append_next(run_id, [EventDraft(event=started, ts_millis=0)])
    t0 = time.perf_counter()
    for i in range(states):
        sid = f"bench.main.s{i:05d}"
        entered = StateEntered(state_id=sid, attempt=0, base_snapshot_id=aid)
        draft = EventDraft(event=entered, ts_millis=0, state_id=sid, attempt=0)
        events.append_next(run_id, [draft])
        snap = artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, canonical_bytes({"k": i, "s": sid}))
        done = StateCompleted(state_id=sid, context_snapshot_id=snap)
        events.append_next(run_id, [EventDraft(event=done, ts_millis=0, state_id=sid, attempt=0)])
    elapsed = time.perf_counter() - t0
    events.close()
    return elapsed


def run_engine(
    events: EventStore,
    artifacts: ArtifactStore,
    target: str,
    run_input: dict[str, int],
    cfg: RunConfig,
) -> tuple[float, int]:
    registry = OperationRegistry.default()
    prepared = prepare_run(registry, target, run_input, cfg)
    store_manifest(artifacts, prepared.manifest)
    engine = LocalEngine(events, artifacts, registry)
    t0 = time.perf_counter()
    result = engine.start(
        plan=prepared.plan,
        run_config=cfg,
        manifest=prepared.manifest,
        manifest_id=prepared.manifest_id,
        initial_context=prepared.initial_context,
    )
    elapsed = time.perf_counter() - t0
    assert result.phase.value == "Completed", result
    return elapsed, len(prepared.plan.graph.states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=1000)
    parser.add_argument("--fan-out", type=int, default=16)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the fan-out")
    args = parser.parse_args()
    n = args.states
    fan = RunConfig(execution_mode=FanOutJoin(max_concurrency=args.fan_out))
    seq = RunConfig()
    rows: list[tuple[str, int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = baseline(root / "baseline", n)
        rows.append(("baseline: raw durable writes (2 appends + 1 put per state)", n, base))
        for label, target, run_input, cfg in (
            (f"fan-out/join, --fan-out {args.fan_out}", "fanout_demo", {"items": n - 1}, fan),
            ("chain, sequential", "chain_demo", {"states": n}, seq),
        ):
            ev, art = embedded(root / target)
            secs, count = run_engine(ev, art, target, run_input, cfg)
            rows.append((f"embedded {label}", count, secs))
            ev.close()
            secs, count = run_engine(
                InMemoryEventStore(), InMemoryArtifactStore(), target, run_input, cfg
            )
            rows.append((f"in-memory {label}", count, secs))
        if args.profile:
            ev, art = embedded(root / "profile")
            prof = cProfile.Profile()
            prof.enable()
            run_engine(ev, art, "fanout_demo", {"items": n - 1}, fan)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
            profile_text = out.getvalue()
        else:
            profile_text = ""
    print(f"{'run':64} {'states':>7} {'seconds':>8} {'states/s':>9} {'ms/state':>9} {'x base':>7}")
    for label, count, secs in rows:
        print(
            f"{label:64} {count:7d} {secs:8.3f} {count / secs:9.0f} "
            f"{1000 * secs / count:9.3f} {secs / base:7.2f}"
        )
    if profile_text:
        print(profile_text)


if __name__ == "__main__":
    main()
