#!/usr/bin/env python3
"""Benchmark the distributed stores (not a test): what do the guards and checks cost?

* Redis: the guarded Lua `append_next` of one attributed domain event vs a plain
  `XADD` of the same bytes — one client, then 8 client processes on one run.
* S3 (SeaweedFS, the server the tests use): put of a new object (HEAD miss + conditional
  PUT), put of an existing object (the HEAD short cut, no upload) and verified get, for
  1 KB, 64 KB, 1 MB. `--moto` runs the same on moto's Python server too, for comparison
  (needs `pip install 'moto[server]'`, no longer a dependency).

Starts its own redis-server and S3 server(s) on free loopback ports; bounded
runtime (well under two minutes). Run: `.venv/bin/python scripts/bench_stores.py`
(`--only s3` skips Redis).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402

from mfm_dist.artifacts import ArtifactKind  # noqa: E402
from mfm_dist.events import DomainEvent, EventDraft, RunStarted, StateEntered  # noqa: E402
from mfm_dist.ids import ArtifactId, OpId, RunId, StateId  # noqa: E402
from mfm_dist.settings import Settings  # noqa: E402
from mfm_dist.stores.redis_events import (  # noqa: E402
    RedisEventStore,
    _append_keys,
    _body,
    _event_args,
)
from mfm_dist.stores.s3_artifacts import S3ArtifactStore  # noqa: E402
from support.servers import (  # noqa: E402
    S3_ACCESS_ENV,
    S3_SECRET_ENV,
    TEST_S3_ACCESS,
    TEST_S3_SECRET,
    RedisServer,
    S3Server,
    free_port,
)

SNAP = ArtifactId("a" * 64)
STATE = StateId("bench.main.work")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f}"


def draft(n: int) -> EventDraft:
    event = DomainEvent(name="progress", payload={"n": n, "note": "benchmark event"})
    return EventDraft(event=event, ts_millis=1_700_000_000_000, state_id=STATE, attempt=0)


def prepare_run(url: str) -> str:
    store = RedisEventStore.from_url(url)
    rid = RunId(str(uuid.uuid4()))
    started = RunStarted(op_id=OpId("bench"), manifest_id=SNAP, initial_snapshot_id=SNAP)
    entered = StateEntered(state_id=STATE, attempt=0, base_snapshot_id=SNAP)
    store.append_next(
        rid,
        [
            EventDraft(event=started, ts_millis=1),
            EventDraft(event=entered, ts_millis=2, state_id=STATE, attempt=0),
        ],
    )
    store.close()
    return str(rid)


class RedisClient:
    """One client appending in one mode; its connection and prebuilt inputs are kept across
    the rounds of a benchmark (built by the warm-up, so no round pays for them)."""

    def __init__(self, url: str, run_id: str, mode: str, ops: int) -> None:
        self.mode = mode
        self.run_id = run_id
        d = draft(0)
        if mode == "guarded":
            self.store = RedisEventStore.from_url(url)
            self.drafts = [draft(i) for i in range(ops)]
        elif mode == "lua":
            # The guarded script alone, arguments prebuilt: the server-side cost of the guards
            # (what append_next sends for this event, with a fresh batch id per call).
            self.store = RedisEventStore.from_url(url)
            self.keys = _append_keys(run_id)
            self.fields = _event_args(d.event, d.ts_millis, d.state_id, d.attempt)
        else:
            self.client = redis.Redis.from_url(url)
            self.stream = f"bench:{{{run_id}}}:plain"
            self.body = _body(d.event, d.ts_millis, d.state_id, d.attempt)
        self.done = 0

    def run(self, ops: int) -> list[float]:
        """`ops` appends; per-op latencies (seconds)."""
        latencies: list[float] = []
        clock = time.perf_counter
        if self.mode == "guarded":
            rid = RunId(self.run_id)
            store = self.store
            while len(self.drafts) < self.done + ops:
                self.drafts.append(draft(len(self.drafts)))
            for d in self.drafts[self.done : self.done + ops]:
                t0 = clock()
                store.append_next(rid, [d])
                latencies.append(clock() - t0)
        elif self.mode == "lua":
            script, keys, fields = self.store._script, self.keys, self.fields
            for _ in range(ops):
                args: list[str | bytes] = ["batch:" + os.urandom(16).hex(), *fields]
                t0 = clock()
                script(keys=keys, args=args)
                latencies.append(clock() - t0)
        else:
            client, stream, body = self.client, self.stream, self.body
            for i in range(self.done, self.done + ops):
                t0 = clock()
                client.xadd(stream, {"seq": str(i), "body": body})
                latencies.append(clock() - t0)
        self.done += ops
        return latencies


_CLIENTS: dict[tuple[str, str, str], RedisClient] = {}


def redis_chunk(url: str, run_id: str, mode: str, ops: int, total: int) -> list[float]:
    """`ops` appends by this process's client for (run, mode), created on first use."""
    key = (url, run_id, mode)
    if key not in _CLIENTS:
        _CLIENTS[key] = RedisClient(url, run_id, mode, total)
    return _CLIENTS[key].run(ops)


Row = tuple[str, str, float, float, float]
MODES = ("plain", "lua", "guarded")
COMMAND = {"plain": "xadd", "lua": "evalsha", "guarded": "evalsha"}


class ServerMeter:
    """What the server spent on a chunk of appends: its own latency tracking of the mode's
    command (p50 and mean, µs per call; nested script commands are inside the script's
    figure) and its process CPU per append (user + sys, µs: everything — parsing, the
    script, AOF propagation, the event loop). Stats are reset before each chunk."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        try:
            self.client.config_set("latency-tracking-info-percentiles", "50 99")
            self.percentiles = True
        except redis.ResponseError:  # Redis < 7: no latency tracking
            self.percentiles = False
        self.samples: dict[str, list[tuple[float | None, float, float]]] = {}

    def _cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def start(self) -> None:
        self.client.config_resetstat()
        self.cpu0 = self._cpu()

    def stop(self, key: str, mode: str, ops: int) -> None:
        cpu = (self._cpu() - self.cpu0) / ops * 1e6
        cmd = COMMAND[mode]
        stats = self.client.info("commandstats").get(f"cmdstat_{cmd}", {})
        mean = float(stats.get("usec_per_call", 0.0))
        p50 = None
        if self.percentiles:
            lat = self.client.info("latencystats")
            p50 = float(lat.get(f"latency_percentiles_usec_{cmd}", {}).get("p50", 0.0))
        self.samples.setdefault(key, []).append((p50, mean, cpu))

    def summary(self, key: str) -> tuple[float | None, float, float]:
        rows = self.samples[key]
        p50s = [r[0] for r in rows if r[0] is not None]
        return (
            statistics.median(p50s) if p50s else None,
            statistics.median(r[1] for r in rows),
            statistics.median(r[2] for r in rows),
        )


def rotations(rounds: int) -> list[tuple[str, ...]]:
    """The order of the modes in each round, rotated so no mode always runs first or last."""
    return [MODES[r % len(MODES) :] + MODES[: r % len(MODES)] for r in range(rounds)]


def bench_redis(
    ops_single: int, ops_each: int, procs: int, rounds: int
) -> tuple[str, list[Row], dict[str, list[float]], ServerMeter]:
    """Interleaved rounds: each round runs every mode for 1/rounds of its appends, so a
    change of load on the (shared) machine hits the baseline and the guarded paths alike;
    throughput is total appends over total time, and each round also gives its own ratio."""
    server = RedisServer(appendonly=True, appendfsync="everysec").start()
    rows: list[Row] = []
    per_round: dict[str, list[float]] = {}
    try:
        info = redis.Redis.from_url(server.url).info("server")
        version = str(info["redis_version"])
        meter = ServerMeter(server.url)
        # One client: each mode on its own run; the warm-up builds the clients.
        runs = {mode: prepare_run(server.url) for mode in MODES}
        chunk = max(ops_single // rounds, 1)
        for mode in MODES:
            redis_chunk(server.url, runs[mode], mode, 50, chunk * rounds + 50)
        walls = {mode: 0.0 for mode in MODES}
        lats: dict[str, list[float]] = {mode: [] for mode in MODES}
        for order in rotations(rounds):
            took = {}
            for mode in order:
                meter.start()
                t0 = time.perf_counter()
                lat = redis_chunk(server.url, runs[mode], mode, chunk, chunk * rounds + 50)
                took[mode] = time.perf_counter() - t0
                meter.stop(f"1 client/{mode}", mode, chunk)
                walls[mode] += took[mode]
                lats[mode] += lat
            for mode in MODES[1:]:
                per_round.setdefault(f"1 client/{mode}", []).append(took["plain"] / took[mode])
        for mode in MODES:
            lat = lats[mode]
            rows.append(("1 client", mode, len(lat) / walls[mode], pct(lat, 0.5), pct(lat, 0.99)))
        _CLIENTS.clear()  # the forked processes below build their own

        # `procs` processes on one run per mode.
        label = f"{procs} procs"
        runs = {mode: prepare_run(server.url) for mode in MODES}
        chunk = max(ops_each // rounds, 1)
        total = chunk * rounds + 50
        ctx = multiprocessing.get_context("fork")
        walls = {mode: 0.0 for mode in MODES}
        lats = {mode: [] for mode in MODES}
        with ctx.Pool(procs) as pool:
            for mode in MODES:  # warm-up: every process builds its client (one task each)
                pool.starmap(
                    redis_chunk,
                    [(server.url, runs[mode], mode, 20, total)] * procs,
                    chunksize=1,
                )
            for order in rotations(rounds):
                took = {}
                for mode in order:
                    meter.start()
                    t0 = time.perf_counter()
                    parts = pool.starmap(
                        redis_chunk,
                        [(server.url, runs[mode], mode, chunk, total)] * procs,
                        chunksize=1,
                    )
                    took[mode] = time.perf_counter() - t0
                    meter.stop(f"{label}/{mode}", mode, chunk * procs)
                    walls[mode] += took[mode]
                    lats[mode] += [x for part in parts for x in part]
                for mode in MODES[1:]:
                    per_round.setdefault(f"{label}/{mode}", []).append(
                        took["plain"] / took[mode]
                    )
        for mode in MODES:
            lat = lats[mode]
            rows.append((label, mode, len(lat) / walls[mode], pct(lat, 0.5), pct(lat, 0.99)))
        store = RedisEventStore.from_url(server.url)
        history = store.read_range(RunId(runs["guarded"]))
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
        assert len(history) == 2 + procs * (20 + chunk * rounds)
        store.close()
    finally:
        server.cleanup()
    return version, rows, per_round, meter


def timed(calls: list[Callable[[], object]]) -> list[float]:
    out = []
    for fn in calls:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


S3Row = tuple[str, str, float, float]
S3_SIZES = {1024: 300, 64 * 1024: 200, 1024 * 1024: 40}


def bench_s3(url: str, iterations: dict[int, int]) -> list[S3Row]:
    """Latencies of the artifact store on `url` (its bucket must exist)."""
    rows: list[S3Row] = []
    store = S3ArtifactStore.from_url(url, credentials=Settings.from_env().s3)
    store.put(ArtifactKind.OUTPUT, b"warm-up")  # the bucket's first put creates its volume
    for size, n in iterations.items():
        blobs = [os.urandom(size) for _ in range(n)]
        new = timed([partial(store.put, ArtifactKind.OUTPUT, b) for b in blobs])
        existing = timed([partial(store.put, ArtifactKind.OUTPUT, blobs[0])] * n)
        aid = store.put(ArtifactKind.OUTPUT, blobs[0])
        gets = timed([partial(store.get, aid)] * n)
        label = f"{size // 1024} KB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MB"
        for op, lat in (("put new", new), ("put existing", existing), ("get", gets)):
            rows.append((label, op, pct(lat, 0.5), pct(lat, 0.99)))
    store.close()
    return rows


def bench_s3_seaweedfs(iterations: dict[int, int]) -> list[S3Row]:
    server = S3Server().start()
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        return bench_s3(server.url_for(bucket, "bench"), iterations)
    finally:
        server.cleanup()


def bench_s3_moto(iterations: dict[int, int]) -> list[S3Row]:
    """The same on moto's server (accepts any credentials; state in memory)."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": TEST_S3_ACCESS, "AWS_SECRET_ACCESS_KEY": "x"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=0.5)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("no moto server (pip install 'moto[server]')") from None
                time.sleep(0.1)
        from minio import Minio

        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        client = Minio(
            f"127.0.0.1:{port}",
            access_key=TEST_S3_ACCESS,
            secret_key=TEST_S3_SECRET,
            secure=False,
            region="us-east-1",
        )
        client.make_bucket(bucket)
        return bench_s3(f"s3://{bucket}/bench?endpoint=http://127.0.0.1:{port}", iterations)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def print_s3(title: str, rows: list[S3Row]) -> None:
    print(f"\n{title} latency (ms)")
    print(f"{'size':<7} {'op':<13} {'p50':>8} {'p99':>8}")
    for row in rows:
        print(f"{row[0]:<7} {row[1]:<13} {fmt_ms(row[2])} {fmt_ms(row[3])}")


def print_redis(
    version: str,
    redis_rows: list[Row],
    per_round: dict[str, list[float]],
    meter: ServerMeter,
    rounds: int,
) -> None:
    print(
        f"\nredis-server {version} (AOF everysec) — append of one event, {rounds} interleaved "
        "rounds; client latency in ms, server µs per call (its latency tracking) and server "
        "CPU µs per append"
    )
    print(
        f"{'clients':<10} {'mode':<8} {'ops/s':>9} {'p50':>8} {'p99':>8} "
        f"{'srv p50':>8} {'srv mean':>9} {'srv CPU':>8}"
    )
    by_key = {(r[0], r[1]): r for r in redis_rows}
    for row in redis_rows:
        p50, mean, cpu = meter.summary(f"{row[0]}/{row[1]}")
        shown = f"{p50:8.1f}" if p50 is not None else f"{'-':>8}"
        print(
            f"{row[0]:<10} {row[1]:<8} {row[2]:9.0f} {fmt_ms(row[3])} {fmt_ms(row[4])} "
            f"{shown} {mean:9.1f} {cpu:8.1f}"
        )
    print("\nratios to plain XADD (lua = guarded script alone, guarded = whole append_next)")
    for clients in sorted({r[0] for r in redis_rows}):
        p = by_key[(clients, "plain")]
        for mode in ("lua", "guarded"):
            g = by_key[(clients, mode)]
            rr = per_round[f"{clients}/{mode}"]
            print(
                f"{clients:<10} {mode:<8} throughput x{g[2] / p[2]:.2f} "
                f"(per round: median x{statistics.median(rr):.2f}, "
                f"x{min(rr):.2f}–x{max(rr):.2f})   "
                f"p50 x{g[3] / p[3]:.2f}   p99 x{g[4] / p[4]:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10000, help="appends for the single client")
    parser.add_argument("--ops-each", type=int, default=2000, help="appends per process")
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (Redis)")
    parser.add_argument("--only", choices=("all", "redis", "s3"), default="all")
    parser.add_argument(
        "--moto", action="store_true", help="also measure moto's S3 server (for comparison)"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    if args.only in ("all", "redis"):
        version, rows, per_round, meter = bench_redis(
            args.ops, args.ops_each, args.procs, args.rounds
        )
        print_redis(version, rows, per_round, meter, args.rounds)
    if args.only in ("all", "s3"):
        os.environ[S3_ACCESS_ENV] = TEST_S3_ACCESS
        os.environ[S3_SECRET_ENV] = TEST_S3_SECRET
        print_s3("S3 (SeaweedFS `weed mini`)", bench_s3_seaweedfs(S3_SIZES))
        if args.moto:
            print_s3("S3 (moto server, same client and sizes)", bench_s3_moto(S3_SIZES))
    print(f"\ntotal benchmark time {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
