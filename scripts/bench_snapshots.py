#!/usr/bin/env python3
"""Benchmark snapshot storage on long sequential runs (issue 10, item 2).

`fanout_demo` run sequentially (the default mode) grows its context by one key per state,
the worst case for storing "the whole context after every state". For each size it runs
the same input on the embedded stores (SQLite + files) in one process and reports:

* the time per state between the first `StateEntered` and the last `StateCompleted`
  (steady state: run start and finish excluded), and its ratio to the smallest size's;
* the bytes the snapshots take in the artifact store (every object but the manifest)
  against the bound docs/storage.md proves: the delta bytes (every state's link record,
  stored or not) plus the final snapshot — and, for information, the bare changes (the
  canonical `{"set", "unset"}` of every state, without the base reference);
* the same input with `--fan-out 16` (each item then starts from the small initial
  snapshot), and sequential / fan-out as a ratio;
* with `--full`, the same sequential runs with links off (every snapshot in full, as
  before links): the time and bytes they save.

Every figure is a same-run ratio. The machine is shared: each run is repeated `--rounds`
times (the sizes interleaved) and the fastest round of each counts. Usage:
    .venv/bin/python scripts/bench_snapshots.py [--sizes 100,1000,5000,10000] [--rounds 2]
        [--full]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mfm_dist import (
    FanOutJoin,
    LocalEngine,
    OperationRegistry,
    RunConfig,
    prepare_run,
    store_manifest,
)
from mfm_dist.canonical import canonical_bytes
from mfm_dist.deltas import compute_delta
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.snapshots import SnapshotStats, SnapshotStore
from mfm_dist.events import EventEnvelope, StateCompleted, StateEntered
from mfm_dist.ids import RunId
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.sqlite import SqliteEventStore


@dataclass
class Result:
    states: int
    seconds: float
    steady_s: float
    stored: int
    final: int
    stats: SnapshotStats
    changes: int

    @property
    def per_state_ms(self) -> float:
        return 1000 * self.steady_s / self.states


def stored_bytes(root: Path, manifest_id: str) -> int:
    return sum(
        p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != manifest_id
    )


def run(
    root: Path, items: int, config: RunConfig, *, links: bool = True, changes: bool = False
) -> Result:
    events = SqliteEventStore(root / "events.sqlite3")
    artifacts = FileArtifactStore(root / "artifacts")
    registry = OperationRegistry.default()
    prepared = prepare_run(registry, "fanout_demo", {"items": items}, config)
    store_manifest(artifacts, prepared.manifest)
    marks: list[float] = []

    def listener(env: EventEnvelope) -> None:
        if isinstance(env.event, StateEntered | StateCompleted):
            marks.append(time.perf_counter())

    engine = LocalEngine(events, artifacts, registry, listener=listener)
    engine.snapshots.links = links
    t0 = time.perf_counter()
    result = engine.start(
        plan=prepared.plan,
        run_config=config,
        manifest=prepared.manifest,
        manifest_id=prepared.manifest_id,
        initial_context=prepared.initial_context,
    )
    seconds = time.perf_counter() - t0
    assert result.phase.value == "Completed", result
    assert result.final_snapshot_id is not None
    states = len(prepared.plan.graph.states)
    final = len(artifacts.get(result.final_snapshot_id))
    changed = bare_changes(events, artifacts, result.run_id) if changes else 0
    events.close()
    return Result(
        states,
        seconds,
        marks[-1] - marks[0],
        stored_bytes(root / "artifacts", prepared.manifest_id),
        final,
        engine.snapshots.stats,
        changed,
    )


def bare_changes(events: SqliteEventStore, artifacts: FileArtifactStore, run_id: str) -> int:
    """Σ over completed states of the canonical `{"set", "unset"}` of their delta."""
    history = RunHistory.load(events, RunId(run_id))
    snapshots = SnapshotStore(artifacts)
    total = 0
    for record in history.states.values():
        last = record.last
        if last is None or last.snapshot_id is None:
            continue
        delta = compute_delta(
            snapshots.load(last.base_snapshot_id), snapshots.load(last.snapshot_id)
        )
        total += len(canonical_bytes({"set": delta.writes, "unset": sorted(delta.deletes)}))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000,10000")
    parser.add_argument("--fan-out", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also run with links off")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    seq = RunConfig()
    fan = RunConfig(execution_mode=FanOutJoin(max_concurrency=args.fan_out))
    best: dict[tuple[str, int], Result] = {}
    changes_of: dict[int, int] = {}

    def keep(kind: str, n: int, result: Result) -> None:
        if (kind, n) not in best or result.steady_s < best[kind, n].steady_s:
            best[kind, n] = result

    for r in range(args.rounds):
        for n in sizes:
            items = n - 1  # plus the join: n states
            with tempfile.TemporaryDirectory() as tmp:
                sequential = run(Path(tmp) / "seq", items, seq, changes=r == 0)
                changes_of.setdefault(n, sequential.changes)
                keep("seq", n, sequential)
                keep("fan", n, run(Path(tmp) / "fan", items, fan))
                if args.full:
                    keep("full", n, run(Path(tmp) / "full", items, seq, links=False))
            print(f"... round {r + 1}: {n} states done", flush=True)
    rows = [(best["seq", n], best["fan", n], best.get(("full", n))) for n in sizes]
    first = rows[0][0].per_state_ms
    print()
    print(
        f"{'states':>7} {'seq ms/st':>9} {'x first':>7} {'fan ms/st':>9} {'seq/fan':>7} "
        f"{'stored':>11} {'deltas':>11} {'final':>10} {'stored/(d+f)':>12} "
        f"{'changes':>10} {'links':>6} {'fulls':>6}"
    )
    for s, f, _ in rows:
        bound = s.stats.delta_bytes + s.final
        print(
            f"{s.states:7d} {s.per_state_ms:9.3f} {s.per_state_ms / first:7.2f} "
            f"{f.per_state_ms:9.3f} {s.steady_s / f.steady_s:7.2f} "
            f"{s.stored:11,d} {s.stats.delta_bytes:11,d} {s.final:10,d} "
            f"{s.stored / bound:12.2f} {changes_of[s.states]:10,d} "
            f"{s.stats.links:6d} {s.stats.fulls:6d}"
        )
    per_state = [s.per_state_ms for s, _, _ in rows]
    print(f"\nper-state time, slowest / fastest size: {max(per_state) / min(per_state):.2f}")
    print(
        "whole runs (s): "
        + ", ".join(f"{s.states}: seq {s.seconds:.2f} / fan {f.seconds:.2f}" for s, f, _ in rows)
    )
    if args.full:
        print("\nlinks off (every snapshot in full), same sizes:")
        for s, _, full in rows:
            assert full is not None
            print(
                f"{s.states:7d} states: {full.per_state_ms:.3f} ms/state "
                f"({full.per_state_ms / s.per_state_ms:.2f}x with links), "
                f"{full.stored:,d} bytes ({full.stored / s.stored:.1f}x with links)"
            )


if __name__ == "__main__":
    main()
