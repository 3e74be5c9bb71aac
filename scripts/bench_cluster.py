"""Benchmark the distributed backend on a local cluster (real redis-server, SeaweedFS S3,
real Celery workers: 1 control + 2 attempt-worker processes).

Runs, in one script and on the same broker and workers:

1. a raw Celery chord of N no-op tasks (baseline) vs an N-state no-op fan-out/join
   through mfm-dist (`fanout_demo`, N-1 items + join) — the ratio (goal <= 1.3x);
2. a 100-state chain (`chain_demo`): per-state latency vs one raw Celery task round
   trip (goal <= 2x);
3. the fan-out with each state writing 1 KB to the context (`payload_bytes`);
4. a per-state breakdown of the fan-out with `MFM_TIMING=1` workers (broker wait,
   appends, leases, snapshot load/save, artifact put/get, hashing, coordinator).

    .venv/bin/python scripts/bench_cluster.py [--states 1000] [--chain 100] [--rounds 3]

Items 1–3 run in `--rounds` interleaved rounds (baseline, then mfm-dist, again and again),
so load from elsewhere on the machine falls on both; each round gives a ratio, and the
median and the best of them are printed.

Bounded: every wait has a timeout; the cluster is torn down at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mfm_dist.config import FanOutJoin, RunConfig  # noqa: E402
from mfm_dist.results import RunPhase  # noqa: E402
from support.cluster import LocalCluster  # noqa: E402

TIMEOUT_S = 300.0


def bench_cluster(
    root: Path, artifacts: str, extra_env: dict[str, str] | None = None
) -> LocalCluster:
    """The benchmarks' cluster: 2 attempt workers, AOF everysec, no S3 proxy; `artifacts`
    `file` keeps artifacts in a shared directory (to separate the S3 server's cost)."""
    return LocalCluster(
        root,
        attempt_workers=2,
        appendfsync="everysec",
        operations="",
        proxy_s3=False,
        artifacts_url=f"file://{root / 'artifacts'}" if artifacts == "file" else None,
        extra_env=extra_env,
    )


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """A benchmark's result table: label, value."""
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{title}")
    print("-" * (width + 16))
    for label, value in rows:
        print(f"{label:<{width}}{value:>16}")


def median_s(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s"


def ratios(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x / {min(values):.2f}x"


def raw_chord(n: int) -> float:
    from celery import chord, group

    from workers.tasks import noop

    header = group(noop.signature(queue="mfm.attempts") for _ in range(n))
    start = time.perf_counter()
    result = chord(header, noop.si().set(queue="mfm.control")).apply_async()
    result.get(timeout=TIMEOUT_S)
    return time.perf_counter() - start


def raw_round_trip(samples: int = 30, queue: str = "mfm.attempts") -> float:
    """Median seconds of one no-op task's round trip through `queue` (the baseline)."""
    from workers.tasks import noop

    times = []
    for _ in range(samples):
        start = time.perf_counter()
        noop.apply_async(queue=queue).get(timeout=TIMEOUT_S)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mfm_run(target: str, run_input: dict[str, int], config: RunConfig) -> float:
    from workers.submit import submit_run, wait_for_run

    start = time.perf_counter()
    run_id = submit_run(target, run_input, config)
    result = wait_for_run(str(run_id), TIMEOUT_S, poll_s=0.01)
    elapsed = time.perf_counter() - start
    if result.phase != RunPhase.COMPLETED:
        raise RuntimeError(f"{target} run {run_id} ended {result.phase}")
    return elapsed


def breakdown(n: int) -> list[tuple[str, float, int]]:
    from workers.runtime import get_runtime
    from workers.timing import read_timings, reset_timings

    rt = get_runtime()
    reset_timings(rt.redis)
    mfm_run(
        "fanout_demo", {"items": n - 1}, RunConfig(execution_mode=FanOutJoin(max_concurrency=n))
    )
    time.sleep(0.5)
    rows = read_timings(rt.redis)
    out = [(name, seconds, count) for name, (seconds, count) in sorted(rows.items())]
    save = rows.get("snapshot_save", (0.0, 0))[0]
    put = rows.get("artifact_put", (0.0, 0))[0]
    out.append(("hashing+canonical (snapshot_save - artifact_put)", max(0.0, save - put), 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--states", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=100)
    parser.add_argument(
        "--inline",
        choices=("on", "off"),
        default="on",
        help="MFM_INLINE_COORDINATION of the workers (off: chord joins and timers only)",
    )
    parser.add_argument(
        "--artifacts",
        choices=("s3", "file"),
        default="s3",
        help="s3: the SeaweedFS S3 server (default); file: a shared local file store, to "
        "separate the S3 server's cost from the engine's",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved baseline/mfm-dist rounds (default 3)"
    )
    args = parser.parse_args()
    n = args.states
    fan = RunConfig(execution_mode=FanOutJoin(max_concurrency=n))
    root = Path(tempfile.mkdtemp(prefix="mfm-bench-"))
    rows: list[tuple[str, str]] = []
    with bench_cluster(
        root,
        args.artifacts,
        {"MFM_INLINE_COORDINATION": "1" if args.inline == "on" else "0"},
    ) as c:
        c.activate(current_app=True)  # noop/advance/submit via task proxies
        mfm_run("fanout_demo", {"items": 50}, fan)  # warm up workers and caches
        raw_chord(50)

        # Interleaved rounds: the baseline and mfm-dist alternate, so load from elsewhere on
        # the machine hits both; the per-round ratios are reported (median and best).
        chords, fans, pays, rtts, chains = [], [], [], [], []
        for _ in range(args.rounds):
            chords.append(raw_chord(n))
            fans.append(mfm_run("fanout_demo", {"items": n - 1}, fan))
            pays.append(mfm_run("fanout_demo", {"items": n - 1, "payload_bytes": 1024}, fan))
            rtts.append(raw_round_trip())
            chains.append(mfm_run("chain_demo", {"states": args.chain}, RunConfig()) / args.chain)
        fan_r = [f / c for f, c in zip(fans, chords, strict=True)]
        pay_r = [p / c for p, c in zip(pays, chords, strict=True)]
        chain_r = [s / r for s, r in zip(chains, rtts, strict=True)]
        rows.append((f"raw Celery chord, {n} no-op tasks (median)", median_s(chords)))
        rows.append((f"mfm-dist fan-out/join, {n} no-op states (median)", median_s(fans)))
        rows.append(("  ratio per round, median / best (goal <= 1.3x)", ratios(fan_r)))
        rows.append(("  per state (median)", f"{statistics.median(fans) / n * 1000:.2f} ms"))
        rows.append(
            ("raw Celery task round trip (median)", f"{statistics.median(rtts) * 1000:.2f} ms")
        )
        rows.append(
            (
                f"mfm-dist chain, {args.chain} states, per state",
                f"{statistics.median(chains) * 1000:.2f} ms",
            )
        )
        rows.append(("  ratio to a round trip, median / best (goal <= 2x)", ratios(chain_r)))
        rows.append((f"mfm-dist fan-out/join, {n} states x 1 KB (median)", median_s(pays)))
        rows.append(("  ratio to the raw chord, median / best", ratios(pay_r)))
        rows.append(("rounds", str(args.rounds)))

        # Timed pass: restart workers with MFM_TIMING=1 (timers cost one Redis round trip
        # per task, so they are off for the runs above).
        for name in list(c.workers):
            kind = "control" if name.startswith("control") else "attempts"
            c.stop_worker(name)
            c.start_worker(kind, extra_env={"MFM_TIMING": "1"})
        mfm_run("fanout_demo", {"items": 50}, fan)
        timed = breakdown(n)

    print_rows(
        f"mfm-dist cluster benchmark (2 attempt-worker processes, -c 1 each; {n} states; "
        f"artifacts: {args.artifacts}; inline coordination {args.inline})",
        rows,
    )
    print(f"\nper-phase breakdown of the {n}-state fan-out (MFM_TIMING=1, summed over processes)")
    print(f"{'phase':<50}{'total s':>10}{'count':>8}{'ms/state':>10}")
    for name, seconds, count in timed:
        print(f"{name:<50}{seconds:>10.3f}{count:>8}{seconds / n * 1000:>10.3f}")


if __name__ == "__main__":
    main()
