#!/usr/bin/env python3
"""Benchmark the plan's ancestor index: the bitmask per state it replaced vs mfm_dist/reach.py.

For each plan shape, one process per measurement (so its peak RSS is its own) runs
`CompiledPlan.build` and then a full `MergeTracker` pass over the plan — `base_plan` then
`record` (a small delta) for every state in canonical order, then `final_plan` — and reports
the seconds of each and the growth of peak RSS over the process's RSS before the build (the
plan's other indexes, the packed deltas and the writer index included); then the memory the
ancestor index alone takes to build and holds (built again on its own: timed, then under
tracemalloc).

* before — the same build with `Reachability` swapped for the old bitmask computation, and
  the old `MergeTracker` methods (tests/support/reach_oracle.py: the code as it was);
* after — the code as it is.

Rounds interleave the two (alternating which goes first), and the report gives medians and
before/after ratios: the machine is shared, single figures are noisy.

Usage: .venv/bin/python scripts/bench_plan.py [--rounds 3] [--cases chain_10k,fan_out_100k]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mfm_dist import plan as plan_module  # noqa: E402
from mfm_dist.engine.merge import Delta, MergeTracker  # noqa: E402
from mfm_dist.plan import CompiledPlan  # noqa: E402
from mfm_dist.reach import Reachability  # noqa: E402
from support.reach_oracle import (  # noqa: E402
    LegacyReach,
    LegacyTracker,
    Shape,
    chain,
    fan_out,
    lattice,
    plan_of,
    random_dag,
    stages,
)

CASES: dict[str, Callable[[], Shape]] = {
    "chain_10k": lambda: chain(10_000),
    "chain_100k": lambda: chain(100_000),
    "fan_out_100k": lambda: fan_out(100_000),
    "lattice_100x1000": lambda: lattice(100, 1_000),
    "random_20k": lambda: random_dag(random.Random(20_000), 20_000, 3, 1_000),
    "stages_100x100x2": lambda: stages(100, 100, 2),
}
"""Chains; one fan-out/join; layers of 100 each linked to its 3 neighbours in the next;
random edges (0–3 predecessors among the 1,000 states before); 100 fan-out/join stages of
100 two-state legs (20,101 states)."""


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(case: str, variant: str) -> dict[str, float]:
    shape = CASES[case]()
    execution_plan = plan_of(shape)
    is_chain = case.startswith("chain")
    deltas = [
        Delta(writes={f"own{i}": i, "n": i} if is_chain else {f"own{i}": i})
        for i in range(shape[0])
    ]
    if variant == "before":
        setattr(plan_module, "Reachability", LegacyReach)  # noqa: B010 (the baseline build)
    before = rss_mb()
    t0 = time.perf_counter()
    plan = CompiledPlan.build(execution_plan)
    t1 = time.perf_counter()
    if variant == "before":
        reach = plan.reach
        assert isinstance(reach, LegacyReach)
        tracker: MergeTracker = LegacyTracker(plan, reach.ancestors)
    else:
        tracker = MergeTracker(plan)
    applied = 0
    for i in range(len(plan)):
        applied += len(tracker.base_plan(i)[1])
        assert tracker.record(i, f"{i:064x}", deltas[i]) is None
    applied += len(tracker.final_plan()[1])
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The index alone, built again: timed, then under tracemalloc (tracing slows it).
    del tracker
    index_class = LegacyReach if variant == "before" else Reachability
    t3 = time.perf_counter()
    index_class(plan.preds)
    index_s = time.perf_counter() - t3
    tracemalloc.start()
    index = index_class(plan.preds)
    index_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del index
    return {
        "build_s": t1 - t0,
        "pass_s": t2 - t1,
        "peak_mb": max(0.0, peak - before),
        "index_s": index_s,
        "index_mb": index_mb,
        "states": float(len(plan)),
        "applied": float(applied),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    cases = args.cases.split(",")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        for case in cases:
            variants = ("before", "after") if r % 2 == 0 else ("after", "before")
            for variant in variants:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", case, variant],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                got = json.loads(out)
                results.setdefault((case, variant), []).append(got)
                print(f"round {r + 1} {case:18} {variant:6} {got}", file=sys.stderr)
    head = (
        f"{'case':18} {'states':>7} | {'build s':>15} {'ratio':>6} | {'pass s':>15} {'ratio':>6} "
        f"| {'peak RSS MB':>17} {'ratio':>6} | {'index s':>15} {'ratio':>6} "
        f"| {'index MB':>17} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for case in cases:
        b, a = results[(case, "before")], results[(case, "after")]

        def med(rows: list[dict[str, float]], key: str) -> float:
            return statistics.median(row[key] for row in rows)

        cells = []
        for key, fmt in (
            ("build_s", "{:7.3f}"),
            ("pass_s", "{:7.3f}"),
            ("peak_mb", "{:8.1f}"),
            ("index_s", "{:7.3f}"),
            ("index_mb", "{:8.2f}"),
        ):
            mb, ma = med(b, key), med(a, key)
            ratio = mb / ma if ma > 0 else float("inf")
            cells.append(f"{fmt.format(mb)}→{fmt.format(ma).strip():<7} {ratio:5.1f}x")
        print(f"{case:18} {int(med(a, 'states')):>7} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
