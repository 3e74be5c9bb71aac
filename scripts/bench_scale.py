"""Scale benchmark: one very wide fan-out on a local cluster, with the peak memory of every
process (not part of CI).

Cluster (tests/support/cluster.py's LocalCluster, as `scripts/bench_cluster.py` sets it up):
redis-server (AOF everysec), the SeaweedFS S3 server, 1 control worker and 2 attempt
workers (prefork, `-c 1`). One `fanout_demo` run of N states (N-1 items + a join), by
default all in one wave (`--fan-out N`), is submitted and followed to its end; then the
run is verified (`mfm verify`, in this process).

Reported: wall time and states/s of the run, the longest coordinator step seen in the
control worker's log, the peak RSS of every process (each worker's parent and pool children
— children replaced by `max_tasks_per_child` included —, redis-server, weed), the control
worker's growth per state, and verify's time and states/s. With `--cold-look-at F`, also
how long a coordinator that has never seen the run takes to load it once a fraction F of
its states completed, with the delta journal and without it.

    .venv/bin/python scripts/bench_scale.py --states 100000
    .venv/bin/python scripts/bench_scale.py --states 1500 2000 --fan-out 1500
    .venv/bin/python scripts/bench_scale.py --states 20000 --cold-look-at 0.5

Bounded: every wait has a timeout; the cluster is torn down at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

from bench_cluster import bench_cluster, print_rows  # noqa: E402

SAMPLE_S = 0.25


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Peaks:
    """Peak RSS (KB) per labelled process, sampled; a label covers every pid it ever had
    (a replaced pool child keeps its slot's label)."""

    kb: dict[str, int] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)

    def note(self, label: str, pid: int) -> None:
        hwm = _status_kb(pid, "VmHWM") or 0
        if hwm > self.kb.get(label, 0):
            self.kb[label] = hwm


class Sampler:
    def __init__(self, cluster: object) -> None:
        self.cluster = cluster
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def processes(self) -> list[tuple[str, int]]:
        c = self.cluster
        out: list[tuple[str, int]] = []
        for name, worker in list(c.workers.items()):  # type: ignore[attr-defined]
            pid = worker.proc.pid
            out.append((f"{name} (main)", pid))
            for k, child in enumerate(sorted(_children(pid))):
                out.append((f"{name} (pool child {k})", child))
        if c.redis.proc is not None:  # type: ignore[attr-defined]
            out.append(("redis-server", c.redis.proc.pid))  # type: ignore[attr-defined]
        if c.s3.proc is not None:  # type: ignore[attr-defined]
            pid = c.s3.proc.pid  # type: ignore[attr-defined]
            out.append(("weed", pid))
            out.extend((f"weed (child {k})", p) for k, p in enumerate(_children(pid)))
        return out

    def rss_now(self) -> dict[str, int]:
        return {label: _status_kb(pid, "VmRSS") or 0 for label, pid in self.processes()}

    def start(self) -> None:
        self.peaks.baseline = self.rss_now()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            for label, pid in self.processes():
                self.peaks.note(label, pid)

    def stop(self) -> Peaks:
        self._stop.set()
        self._thread.join(timeout=5)
        for label, pid in self.processes():
            self.peaks.note(label, pid)
        return self.peaks


STEP_RE = re.compile(r"advance\[[^\]]*\] succeeded in ([0-9.]+)s: '([^']*)'")


def longest_steps(log: Path, since: int) -> list[tuple[float, str]]:
    """The control worker's longest `advance` tasks since byte offset `since` (Celery logs
    each task's run time)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    steps = [(float(m.group(1)), m.group(2)) for m in STEP_RE.finditer(text)]
    return sorted(steps, reverse=True)[:5]


def cold_looks(run_id: str) -> list[tuple[str, str]]:
    """What a coordinator that has never seen the run (a restarted control worker) spends
    loading it, with the delta journal and without (every completed state's snapshots read,
    as before the journal), in this process, while the run goes on."""
    from support.worker_harness import FakeDispatcher
    from workers.coordinator import Coordinator
    from workers.runtime import get_runtime

    rt = get_runtime()
    rows: list[tuple[str, str]] = []
    for journal in (True, False):
        rt.snapshots.clear_cache()
        coordinator = Coordinator(rt, FakeDispatcher())
        if not journal:
            coordinator._journaled = lambda rid, position: {}  # type: ignore[method-assign]
        try:
            t0 = time.perf_counter()
            run = coordinator._load(run_id)
            seconds = time.perf_counter() - t0
        finally:
            coordinator.close()
        done = len(run.progress.completed)
        label = "with the delta journal" if journal else "without it"
        rows.append((f"cold look {label}", f"{seconds:.1f} s / {done} done"))
        print(f"  cold look {label}: {seconds:.2f} s, {done} states completed", flush=True)
    return rows


def run_one(
    c: object, n: int, fan_out: int, timeout_s: float, cold_at: float | None = None
) -> list[tuple[str, str]]:
    from mfm_dist.config import FanOutJoin, RunConfig
    from mfm_dist.events import RunCompleted, RunStatus
    from mfm_dist.ids import RunId
    from mfm_dist.settings import Settings
    from mfm_dist.stores.urls import open_artifact_store, open_event_store
    from mfm_dist.verify import verify_run
    from workers.runtime import get_runtime
    from workers.submit import submit_run

    rt = get_runtime()
    control = next(w for name, w in c.workers.items() if name.startswith("control"))  # type: ignore[attr-defined]
    log_offset = control.logfile.stat().st_size if control.logfile.exists() else 0
    sampler = Sampler(c)
    sampler.start()
    config = RunConfig(execution_mode=FanOutJoin(max_concurrency=fan_out))
    start = time.perf_counter()
    run_id = submit_run("fanout_demo", {"items": n - 1}, config)
    print(f"  submitted {run_id} ({n} states) in {time.perf_counter() - start:.1f} s", flush=True)
    phase = None
    deadline = time.monotonic() + timeout_s
    rid = RunId(str(run_id))
    said = time.monotonic()
    cold_rows: list[tuple[str, str]] = []
    while time.monotonic() < deadline:  # only the log's last event: O(1) per poll
        head = rt.events.head_seq(rid)
        if cold_at is not None and not cold_rows and head >= 2 * n * cold_at:
            cold_rows = cold_looks(str(run_id))
        last = rt.events.read_range(rid, head, head) if head else []
        if last and isinstance(last[0].event, RunCompleted):
            phase = last[0].event.status
            break
        if time.monotonic() - said >= 60:
            said = time.monotonic()
            print(f"  {time.perf_counter() - start:.0f} s: {head} events", flush=True)
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    peaks = sampler.stop()
    if phase != RunStatus.COMPLETED:
        raise RuntimeError(f"run {run_id} ended {phase} after {elapsed:.0f} s")
    steps = longest_steps(control.logfile, log_offset)

    # As `mfm verify` does it: the stores opened from their URLs (no Redis artifact cache).
    settings = Settings.from_env(c.env)  # type: ignore[attr-defined]
    assert settings.events_url is not None and settings.artifacts_url is not None
    events = open_event_store(settings.events_url, redis=settings.redis)
    artifacts = open_artifact_store(settings.artifacts_url, s3=settings.s3)
    rss_before = _status_kb(os.getpid(), "VmRSS") or 0
    with contextlib.suppress(OSError):  # reset this process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    report = verify_run(events, artifacts, rt.registry, str(run_id))
    verify_s = time.perf_counter() - t0
    verify_mb = ((_status_kb(os.getpid(), "VmHWM") or 0) - rss_before) / 1024
    if not report.ok:
        raise RuntimeError(f"verify failed: {report.violations[:3]}")

    rows: list[tuple[str, str]] = [
        ("run id", str(run_id)),
        ("wall time", f"{elapsed:.1f} s"),
        ("states/s", f"{n / elapsed:.0f}"),
        ("verify", f"{verify_s:.1f} s"),
        ("verify states/s", f"{n / verify_s:.0f}"),
        ("verify peak RSS above the process's", f"{max(verify_mb, 0):.0f} MB"),
    ]
    rows += cold_rows
    for k, (secs, status) in enumerate(steps[:3]):
        rows.append((f"longest advance #{k + 1} ({status})", f"{secs:.2f} s"))
    for label in sorted(peaks.kb):
        rows.append((f"peak RSS {label}", f"{peaks.kb[label] / 1024:.0f} MB"))
    base = {k: v for k, v in peaks.baseline.items() if k.startswith("control")}
    grown = max(
        (peaks.kb.get(k, 0) - v for k, v in base.items() if "child" in k), default=0
    )
    rows.append(("control pool child growth per state", f"{grown * 1024 / n:.0f} B"))
    print(json.dumps({"states": n, "wall_s": elapsed, "verify_s": verify_s,
                      "peaks_kb": peaks.kb, "longest_steps": steps}), flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--states", type=int, nargs="+", default=[100_000])
    parser.add_argument("--fan-out", type=int, default=None, help="max_concurrency (default N)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--artifacts", choices=("s3", "file"), default="s3")
    parser.add_argument(
        "--lease-ttl", type=float, default=10.0, help="MFM_LEASE_TTL_S (the default: 10)"
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="MFM_TIMING=1 workers: print where the time went, per phase (costs a little)",
    )
    parser.add_argument(
        "--cold-look-at",
        type=float,
        default=None,
        metavar="FRACTION",
        help="once this fraction of the states completed, time a cold coordinator's load "
        "of the run with the delta journal and without it",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mfm-scale-"))
    env = {
        "MFM_WORKER_MAX_TASKS_PER_CHILD": os.environ.get("MFM_WORKER_MAX_TASKS_PER_CHILD", ""),
        "MFM_LEASE_TTL_S": str(args.lease_ttl),
        "MFM_TIMING": "1" if args.timing else "",
    }
    with bench_cluster(root, args.artifacts, {k: v for k, v in env.items() if v}) as c:
        c.activate()
        from mfm_dist.config import FanOutJoin, RunConfig
        from workers.submit import submit_run, wait_for_run

        warm_config = RunConfig(execution_mode=FanOutJoin(max_concurrency=8))
        warm = submit_run("fanout_demo", {"items": 20}, warm_config)
        wait_for_run(str(warm), 120.0)
        from workers.runtime import get_runtime
        from workers.timing import read_timings, reset_timings

        for n in args.states:
            reset_timings(get_runtime().redis)
            rows = run_one(c, n, args.fan_out or n, args.timeout, args.cold_look_at)
            print_rows(
                f"fanout_demo, {n} states, fan-out {args.fan_out or n} "
                f"(1 control + 2 attempt workers, artifacts {args.artifacts})",
                rows,
            )
            if args.timing:
                timed = read_timings(get_runtime().redis)
                print(f"\nper-phase totals, summed over processes ({n} states)")
                print(f"{'phase':<28}{'total s':>10}{'count':>9}{'ms/state':>10}")
                for name, (seconds, count) in sorted(timed.items()):
                    print(f"{name:<28}{seconds:>10.2f}{count:>9}{seconds / n * 1000:>10.3f}")


if __name__ == "__main__":
    main()
