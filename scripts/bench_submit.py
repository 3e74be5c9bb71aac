"""Benchmark submissions on a local cluster: how many runs/s are accepted, how many small
runs/s complete, and whether coordination stays fast while a submission backlog drains.

Cluster (tests/support/cluster.py's LocalCluster): redis-server, the S3 server, 1 control worker,
2 attempt-worker processes and 1 submission worker (`-Q mfm.submit,celery`, `-c 2`). Every
figure is compared with a baseline measured in the same run on the same broker and workers:

1. raw Celery: N no-op tasks sent at once to the submission queue — tasks/s — and one
   task's round trip;
2. accepted runs/s: N submissions of a 4-state run (`fanout_demo`, 3 items + join) sent as
   `mfm.submit_batch` messages of B requests — from the first send to the last reply;
   and the same N as single `mfm.submit` messages;
3. completed runs/s: from the first send until every one of those runs has `RunCompleted`;
4. coordination under a backlog: a 20-state chain's duration alone, and again while a
   backlog of submissions drains (it must stay flat: submissions have their own queue).

    .venv/bin/python scripts/bench_submit.py [--runs 2000] [--batch 200] [--artifacts s3|file]

Bounded: every wait has a timeout; the cluster is torn down at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

from bench_cluster import bench_cluster, print_rows, raw_round_trip  # noqa: E402

from mfm_dist.stores.redis_keys import META, run_key  # noqa: E402

TIMEOUT_S = 600.0
SMALL = {"op": "fanout_demo", "input": {"items": 3}}
FAN4 = {"execution_mode": {"FanOutJoin": {"max_concurrency": 4}}}


def raw_throughput(n: int) -> float:
    """Seconds for n no-op tasks on the submission queue (sent at once, all results back)."""
    from celery import group

    from workers.tasks import noop

    start = time.perf_counter()
    group(noop.signature(queue="mfm.submit") for _ in range(n)).apply_async().get(timeout=TIMEOUT_S)
    return time.perf_counter() - start


def advance_round_trip(run_id: str, samples: int = 20) -> float:
    """Median seconds for one `advance` through the control queue (a finished run's: the
    coordinator looks and returns at once) — coordination latency, without attempt work."""
    from workers.tasks import advance

    times = []
    for _ in range(samples):
        start = time.perf_counter()
        advance.apply_async(args=(run_id,), queue="mfm.control").get(timeout=TIMEOUT_S)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def requests(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {**SMALL, "config": FAN4, "idempotency_key": f"{tag}-{i}", "labels": {"bench": tag}}
        for i in range(n)
    ]


def submit_batches(reqs: list[dict[str, Any]], batch: int) -> tuple[float, list[str]]:
    from workers.tasks import submit_batch

    start = time.perf_counter()
    pending = [
        submit_batch.apply_async(kwargs={"requests": reqs[k : k + batch]})
        for k in range(0, len(reqs), batch)
    ]
    run_ids: list[str] = []
    for result in pending:
        replies = result.get(timeout=TIMEOUT_S)["replies"]
        bad = [r for r in replies if "run_id" not in r]
        if bad:
            raise RuntimeError(f"refused: {bad[:3]}")
        run_ids += [r["run_id"] for r in replies]
    return time.perf_counter() - start, run_ids


def submit_singles(reqs: list[dict[str, Any]]) -> tuple[float, list[str]]:
    from workers.tasks import submit

    start = time.perf_counter()
    pending = [submit.apply_async(kwargs=r) for r in reqs]
    run_ids = [p.get(timeout=TIMEOUT_S)["run_id"] for p in pending]
    return time.perf_counter() - start, run_ids


def wait_all(run_ids: list[str]) -> float:
    """Seconds until every run has finished (polled in bulk through the run index)."""
    from mfm_dist.ids import RunId
    from workers.runtime import get_runtime

    rt = get_runtime()
    start = time.perf_counter()
    left = set(run_ids)
    while left:
        if time.perf_counter() - start > TIMEOUT_S:
            raise RuntimeError(f"{len(left)} runs unfinished")
        pipe = rt.redis.pipeline(transaction=False)
        ordered = sorted(left)
        for rid in ordered:
            pipe.hget(run_key(rid, META), "phase")
        for rid, phase in zip(ordered, pipe.execute(), strict=True):
            if phase is not None and phase.decode() != "Running":
                if phase.decode() != "Completed":
                    raise RuntimeError(f"run {RunId(rid)} ended {phase.decode()}")
                left.discard(rid)
        time.sleep(0.05)
    return time.perf_counter() - start


def chain_seconds(states: int = 20) -> float:
    from mfm_dist.config import RunConfig
    from workers.submit import submit_run, wait_for_run

    start = time.perf_counter()
    rid = submit_run("chain_demo", {"states": states}, RunConfig())
    wait_for_run(str(rid), TIMEOUT_S, poll_s=0.01)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--artifacts", choices=("s3", "file"), default="s3")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mfm-bench-submit-"))
    rows: list[tuple[str, str]] = []
    with bench_cluster(root, args.artifacts) as c:
        c.start_worker("submit", "submit", concurrency=2)
        c.activate(current_app=True)  # noop/advance/submit via task proxies
        submit_batches(requests(20, "warm"), 10)  # warm up every process
        raw_throughput(100)

        raw_s = raw_throughput(args.runs)
        rtt = raw_round_trip(queue="mfm.submit")
        rows.append((f"raw Celery: {args.runs} no-op tasks on mfm.submit", f"{raw_s:.2f} s"))
        rows.append(("  tasks/s", f"{args.runs / raw_s:.0f}"))
        rows.append(("raw Celery round trip (median)", f"{rtt * 1000:.2f} ms"))

        quiet_chain = chain_seconds()
        quiet_advance = advance_round_trip(run_ids_done := submit_singles(requests(1, "p"))[1][0])
        wait_all([run_ids_done])
        start = time.perf_counter()
        accept_s, run_ids = submit_batches(requests(args.runs, f"b{int(start)}"), args.batch)
        rows.append((f"accepted: {args.runs} runs in batches of {args.batch}", f"{accept_s:.2f} s"))
        rows.append(("  accepted runs/s (target >= 500)", f"{args.runs / accept_s:.0f}"))
        rows.append(("  per submission vs a raw no-op task", f"{(accept_s / raw_s):.2f}x"))
        done_s = wait_all(run_ids) + accept_s
        rows.append((f"completed: {args.runs} 4-state runs", f"{done_s:.2f} s"))
        rows.append(("  completed runs/s (target >= 100)", f"{args.runs / done_s:.0f}"))

        single_s, single_ids = submit_singles(requests(args.singles, f"s{int(start)}"))
        rows.append((f"accepted: {args.singles} single mfm.submit messages", f"{single_s:.2f} s"))
        rows.append(("  accepted runs/s", f"{args.singles / single_s:.0f}"))
        wait_all(single_ids)

        # Coordination while a backlog of submissions drains.
        from workers.tasks import submit_batch

        backlog = requests(args.runs, f"k{int(start)}")
        pending = [
            submit_batch.apply_async(kwargs={"requests": backlog[k : k + args.batch]})
            for k in range(0, len(backlog), args.batch)
        ]
        busy_advance = advance_round_trip(run_ids_done)
        busy_chain = chain_seconds()
        for p in pending:
            p.get(timeout=TIMEOUT_S)
        rows.append(("advance round trip (control queue), quiet", f"{quiet_advance * 1000:.1f} ms"))
        rows.append(
            (
                f"advance round trip while {args.runs} submissions drain",
                f"{busy_advance * 1000:.1f} ms",
            )
        )
        rows.append(("  ratio", f"{busy_advance / quiet_advance:.2f}x"))
        rows.append(("20-state chain, quiet", f"{quiet_chain:.2f} s"))
        rows.append((f"20-state chain while {args.runs} submissions drain", f"{busy_chain:.2f} s"))
        rows.append(
            (
                "  ratio (its attempts queue behind the new runs' attempts)",
                f"{busy_chain / quiet_chain:.2f}x",
            )
        )

    print_rows(
        f"mfm-dist submission benchmark (1 control, 1 submission worker -c 2, 2 attempt "
        f"workers; artifacts: {args.artifacts})",
        rows,
    )


if __name__ == "__main__":
    main()
