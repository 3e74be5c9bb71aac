"""Benchmark backfills: 2,000 partitions of a small op (`partition_demo`, one state) on the
local cluster (1 control + 2 attempt-worker processes; tests/support/cluster.py) and on the
embedded backend, compared with raw Celery in the same run.

Measured per backend: planning time (validate every partition, classify against the
store, store the plan, record the issue), runs/s started and runs/s completed (from the
journal's own timestamps: first issue → last claim, issue → `finished`), a re-issue of the
finished backfill (new runs: must be 0), and the time from `cancel` to every run of a
second backfill terminal (runs that sleep, `--max-active` of them in flight).

    .venv/bin/python scripts/bench_backfill.py [--partitions 2000] [--max-active 64]

Bounded: every wait has a timeout; the cluster is torn down at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

from bench_cluster import bench_cluster, print_rows, raw_round_trip  # noqa: E402

from mfm_dist.backfill.driver import BackfillDriver  # noqa: E402
from mfm_dist.backfill.local import LocalCanceller, LocalPool  # noqa: E402
from mfm_dist.backfill.model import CancelRequested, Partition, backfill_journal  # noqa: E402
from mfm_dist.backfill.planner import (  # noqa: E402
    CreateRequest,
    append_records,
    create,
    load_state,
)
from mfm_dist.backfill.state import PartStatus  # noqa: E402
from mfm_dist.config import RunConfig  # noqa: E402
from mfm_dist.operations import OperationRegistry  # noqa: E402
from mfm_dist.stores.base import EventStore  # noqa: E402

TIMEOUT_S = 900.0
OP = "partition_demo"


def partitions(n: int, tag: str, extra: dict[str, Any] | None = None) -> list[Partition]:
    return [
        Partition(value=f"{tag}-{i:05d}", input={"day": f"{tag}-{i:05d}", **(extra or {})})
        for i in range(n)
    ]


def request(name: str, parts: list[Partition], max_active: int, backend: str) -> CreateRequest:
    return CreateRequest(
        name=name, op=OP, version=None, config=RunConfig(), field="day", source="bench",
        partitions=parts, max_active=max_active, backend=backend,  # type: ignore[arg-type]
    )  # fmt: skip


def journal_times(events: EventStore, name: str) -> tuple[int, int, int]:
    """(issue ms, last claim ms, finished ms) of the backfill's latest issue."""
    entries = events.journal_read(backfill_journal(name))
    issued = max(e.ts_millis for e in entries if e.kind == "issued")
    claims = [e.ts_millis for e in entries if e.kind == "claimed" and e.ts_millis >= issued]
    finished = max(e.ts_millis for e in entries if e.kind == "finished")
    return issued, max(claims) if claims else issued, finished


def wait_until(check: Any, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.05)


def count_runs(events: EventStore) -> int:
    return len(events.list_runs())


def measure(
    events: EventStore,
    artifacts: Any,
    registry: OperationRegistry,
    n: int,
    max_active: int,
    backend: str,
    start: Any,
    tag: str,
) -> list[tuple[str, str]]:
    """Plan, run to the end, re-issue, then cancel a second backfill. `start(name)` makes
    the backend drive `name` (cluster: arm its timer; embedded: a driver thread)."""
    rows: list[tuple[str, str]] = []
    name = f"bench-{tag}"
    t0 = time.perf_counter()
    result = create(events, artifacts, registry, request(name, partitions(n, tag), max_active,
                                                         backend))  # fmt: skip
    plan_s = time.perf_counter() - t0
    rows.append((f"planning {n} partitions (target <= 2 s)", f"{plan_s:.2f} s"))
    rows.append(("  of which validating every input", f"{result.timings['validate_s']:.2f} s"))
    wait_done = start(name)
    wait_done()
    issued, last_claim, finished = journal_times(events, name)
    state = load_state(events, name)
    assert state.counts()["completed"] == n, state.counts()
    started_s = max((last_claim - issued) / 1000, 1e-3)
    done_s = (finished - issued) / 1000
    rows.append(("runs started/s (issue → last claim)", f"{n / started_s:.0f}"))
    rows.append((f"runs completed/s ({n} runs, max active {max_active})", f"{n / done_s:.1f}"))
    rows.append(("  time per completed run", f"{done_s / n * 1000:.2f} ms"))
    before = count_runs(events)
    again = create(events, artifacts, registry, request(name, partitions(n, tag), max_active,
                                                        backend))  # fmt: skip
    start(name)()
    rows.append(("re-issued backfill: new runs (target 0)", f"{count_runs(events) - before}"))
    assert again.new_runs == 0

    cname = f"bench-{tag}-cancel"
    slow = partitions(n, f"{tag}c", {"sleep_ms": 30_000})
    create(events, artifacts, registry, request(cname, slow, max_active, backend))
    wait_done = start(cname)
    wait_until(
        lambda: len(load_state(events, cname).indices(PartStatus.CLAIMED)) >= max_active,
        "the slow backfill to fill its slots",
    )
    time.sleep(1.0)
    t1 = time.perf_counter()
    append_records(events, cname, lambda s: [CancelRequested(by="bench", reason="bench")])
    start(cname, wake_only=True)
    wait_done()
    cancel_s = time.perf_counter() - t1
    state = load_state(events, cname)
    rows.append(
        (f"cancel → every run terminal ({max_active} running)", f"{cancel_s:.2f} s")
    )
    counts = state.counts()
    rows.append(("  cancelled / not started", f"{counts['cancelled']} / {counts['not_started']}"))
    return rows


def cluster_backfills(args: argparse.Namespace, root: Path) -> list[tuple[str, str]]:
    with bench_cluster(root / "cluster", "s3") as c:
        c.activate(current_app=True)  # noop/advance/submit via task proxies
        from celery import group

        from workers.backfills import arm
        from workers.runtime import get_runtime
        from workers.tasks import noop

        rt = get_runtime()
        rtt = raw_round_trip()
        t0 = time.perf_counter()
        n = args.partitions
        group(noop.signature(queue="mfm.attempts") for _ in range(n)).apply_async().get(
            timeout=TIMEOUT_S
        )
        raw_s = time.perf_counter() - t0

        def start(name: str, wake_only: bool = False) -> Any:
            arm(rt.redis, name)
            return lambda: wait_until(
                lambda: load_state(rt.events, name).finished is not None, f"backfill {name}"
            )

        rows = [
            ("raw Celery round trip (median, attempts queue)", f"{rtt * 1000:.2f} ms"),
            (f"raw Celery: {n} no-op tasks at once", f"{raw_s:.2f} s ({n / raw_s:.0f}/s)"),
        ]
        rows += measure(rt.events, rt.artifacts, rt.registry, n, args.max_active, "cluster",
                        start, "c")  # fmt: skip
        per_run = next(v for k, v in rows if k == "  time per completed run")
        per_ms = float(per_run.split()[0])
        rows.append(("  per completed run / raw round trip", f"{per_ms / (rtt * 1000):.2f}x"))
        rows.append(("  per completed run / raw no-op task", f"{per_ms / (raw_s / n * 1000):.2f}x"))
        return rows


def embedded_backfills(args: argparse.Namespace, root: Path) -> list[tuple[str, str]]:
    import threading

    from mfm_dist.cli.backfill import run_driver_lock
    from mfm_dist.stores.files import FileArtifactStore
    from mfm_dist.stores.sqlite import SqliteEventStore

    home = root / "embedded"
    events = SqliteEventStore(home / "events.sqlite3")
    artifacts = FileArtifactStore(home / "artifacts")
    registry = OperationRegistry.default()
    threads: dict[str, threading.Thread] = {}

    def start(name: str, wake_only: bool = False) -> Any:
        if wake_only:
            return lambda: threads[name].join(TIMEOUT_S)

        def drive() -> None:
            state = load_state(events, name)
            assert state.issue is not None
            pool = LocalPool(events, artifacts, registry, workers=state.issue.max_active,
                             lock_run=run_driver_lock(events))  # fmt: skip
            driver = BackfillDriver(events, artifacts, name, pool,
                                    LocalCanceller(events, name, "bench"), poll_s=0.02)  # fmt: skip
            try:
                while driver.step().status != "finished":
                    time.sleep(0.02)
            finally:
                pool.wait()
                pool.shutdown()

        threads[name] = threading.Thread(target=drive, daemon=True)
        threads[name].start()
        return lambda: threads[name].join(TIMEOUT_S)

    samples = []
    for _ in range(5):  # the embedded baseline: one 1-state run, start to end
        t0 = time.perf_counter()
        from mfm_dist.engine.lifecycle import prepare_run, store_manifest
        from mfm_dist.engine.local import LocalEngine

        prepared = prepare_run(registry, OP, {"day": "x"}, RunConfig())
        mid = store_manifest(artifacts, prepared.manifest)
        LocalEngine(events, artifacts, registry).start(
            plan=prepared.plan, run_config=prepared.run_config, manifest=prepared.manifest,
            manifest_id=mid, initial_context=prepared.initial_context,
        )  # fmt: skip
        samples.append(time.perf_counter() - t0)
    single = statistics.median(samples)
    rows = [("one run of the op via LocalEngine.start (median)", f"{single * 1000:.2f} ms")]
    rows += measure(events, artifacts, registry, args.partitions, args.max_active, "local",
                    start, "e")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partitions", type=int, default=2000)
    parser.add_argument("--max-active", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mfm-bench-backfill-"))
    embedded = embedded_backfills(args, root)
    cluster = cluster_backfills(args, root)
    print_rows(
        f"backfill benchmark, cluster (1 control + 2 attempt workers, SeaweedFS S3): "
        f"{args.partitions} partitions of {OP}",
        cluster,
    )
    print_rows(f"backfill benchmark, embedded (SQLite + files, local pool): {args.partitions} "
               f"partitions of {OP}", embedded)  # fmt: skip


if __name__ == "__main__":
    main()
