"""Profile the distributed coordinator in process: memory per state and time per step.

A real `redis-server` (no persistence), a local artifact directory, the real `Coordinator`
with a dispatcher that records chords, and the real `execute_attempt` run by a separate
`Runtime` (another "process": its caches are measured apart from the coordinator's).

For each size it drives one `fanout_demo` run (N-1 items + join, all in one wave) and
reports:

* the coordinator's retained memory (tracemalloc) at the run's peak — after every item
  completed, before the run is finished and forgotten — per state, with the top
  allocation sites;
* the attempt runtime's retained memory per state (its snapshot and fact caches);
* the longest single `advance` and the number of attempts it dispatched.

    .venv/bin/python scripts/profile_coordinator.py --states 1000 5000 [--top 15]
    .venv/bin/python scripts/profile_coordinator.py --states 5000 --cprofile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.servers import RedisServer  # noqa: E402

MODULES = ("mfm_dist", "workers/")


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def profile(n: int, top: int, use_cprofile: bool, concurrency: int | None) -> None:
    from mfm_dist.config import FanOutJoin, RunConfig
    from support.worker_harness import FakeDispatcher, Harness
    from workers.coordinator import Coordinator
    from workers.outcomes import StepOutcome
    from workers.runtime import Runtime

    coord_rt = Runtime.from_env()
    worker_rt = Runtime.from_env()
    dispatcher = FakeDispatcher()
    coordinator = Coordinator(coord_rt, dispatcher)
    h = Harness(coord_rt, dispatcher, coordinator)
    worker = Harness(worker_rt, dispatcher, coordinator)
    config = RunConfig(execution_mode=FanOutJoin(max_concurrency=concurrency or n))

    gc.collect()
    tracemalloc.start(12)
    base = tracemalloc.take_snapshot()
    rss0 = _rss_kb()
    rid = h.submit("fanout_demo", {"items": n - 1}, config)

    longest = (0.0, "", 0)
    steps = 0
    sent_total = 0
    peak_snap = None
    peak_mem = 0
    cache_mem = 0
    worker_mem = 0
    prof = cProfile.Profile() if use_cprofile else None
    t_start = time.perf_counter()
    coord_s = 0.0
    while True:
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        status = coordinator.advance(rid)
        if prof is not None:
            prof.disable()
        dt = time.perf_counter() - t0
        coord_s += dt
        steps += 1
        tasks = dispatcher.take()
        sent_total += len(tasks)
        if dt > longest[0]:
            longest = (dt, status.wire(), len(tasks))
        if status == StepOutcome.FINISHED:
            break
        if any(t.state_id.endswith(".join") for t in tasks):
            # Every item completed and the join is out: the coordinator's peak for this run.
            # Measured apart: a fresh coordinator (own runtime) loads the run from the log.
            fresh_rt = Runtime.from_env()
            fresh = Coordinator(fresh_rt, FakeDispatcher())
            gc.collect()
            before = tracemalloc.take_snapshot()
            fresh._load(rid)
            gc.collect()
            peak_snap = tracemalloc.take_snapshot()
            peak_mem = sum(s.size_diff for s in peak_snap.compare_to(before, "filename"))
            with_cache = peak_mem
            fresh_rt.snapshots.clear_cache()
            gc.collect()
            peak_snap = tracemalloc.take_snapshot()
            peak_mem = sum(s.size_diff for s in peak_snap.compare_to(before, "filename"))
            cache_mem = with_cache - peak_mem
            base = before
            fresh.close()
            del fresh
            fresh_rt.close()
            worker_before = tracemalloc.get_traced_memory()[0]
            worker_rt.snapshots.clear_cache()
            worker_rt._facts.clear()
            gc.collect()
            worker_mem = worker_before - tracemalloc.get_traced_memory()[0]
        for t in tasks:
            worker.run(t)
    wall = time.perf_counter() - t_start
    rss1 = _rss_kb()
    tracemalloc.stop()
    print(f"\n== fanout_demo, {n} states ({steps} advances, {sent_total} attempts sent)")
    print(f"wall {wall:.1f} s, coordinator {coord_s:.2f} s ({n / coord_s:.0f} states/s)")
    print(f"longest advance {longest[0]:.2f} s ({longest[1]}, sent {longest[2]})")
    print(
        f"coordinator's cached run at peak: {peak_mem / 1e6:.1f} MB = {peak_mem / n:.0f} B/state"
        f" (+ snapshot cache {cache_mem / 1e6:.1f} MB)"
    )
    print(f"attempt runtime caches: {worker_mem / 1e6:.1f} MB = {worker_mem / n:.0f} B/state")
    print(f"process RSS growth {(rss1 - rss0) / 1024:.1f} MB")
    if peak_snap is not None and top:
        print("top allocation sites (retained at peak):")
        for stat in peak_snap.compare_to(base, "traceback")[:top]:
            ours = [f for f in stat.traceback if any(m in f.filename for m in MODULES)]
            where = ours[-1] if ours else stat.traceback[-1]
            inner = stat.traceback[-1]
            print(
                f"  {stat.size_diff / 1e6:8.2f} MB {stat.count_diff:9d} blocks  "
                f"{Path(where.filename).name}:{where.lineno}"
                f" <- {Path(inner.filename).name}:{inner.lineno}"
            )
    if prof is not None:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    coordinator.close()
    coord_rt.close()
    worker_rt.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--states", type=int, nargs="+", default=[1000])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mfm-prof-"))
    server = RedisServer().start()
    try:
        os.environ.update(
            {
                "MFM_EVENTS_URL": server.url,
                "MFM_BROKER_URL": server.url,
                "MFM_ARTIFACTS_URL": f"file://{root / 'art'}",
                "MFM_OPERATIONS": "",
                "MFM_LEASE_TTL_S": "30",
                "MFM_ARTIFACT_CACHE_TTL_S": "0",
            }
        )
        for n in args.states:
            profile(n, args.top, args.cprofile, args.concurrency)
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
