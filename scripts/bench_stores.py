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
from servers import (  # type: ignore[import-not-found]  # noqa: E402
    S3_ACCESS_ENV,
    S3_SECRET_ENV,
    TEST_S3_ACCESS,
    TEST_S3_SECRET,
    RedisServer,
    S3Server,
    free_port,
)

from mfm_dist.artifacts import ArtifactKind  # noqa: E402
from mfm_dist.events import DomainEvent, EventDraft, RunStarted, StateEntered  # noqa: E402
from mfm_dist.ids import ArtifactId, OpId, RunId, StateId  # noqa: E402
from mfm_dist.stores.redis_events import (  # noqa: E402
    RedisEventStore,
    _append_keys,
    _body,
    _event_args,
)
from mfm_dist.stores.s3_artifacts import S3ArtifactStore  # noqa: E402

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


def redis_client_loop(url: str, run_id: str, mode: str, ops: int) -> list[float]:
    """One client: `ops` appends, returns per-op latencies (seconds)."""
    latencies: list[float] = []
    if mode == "guarded":
        store = RedisEventStore.from_url(url)
        rid = RunId(run_id)
        drafts = [draft(i) for i in range(ops)]
        for d in drafts:
            t0 = time.perf_counter()
            store.append_next(rid, [d])
            latencies.append(time.perf_counter() - t0)
        store.close()
    elif mode == "lua":
        # The guarded script alone, arguments prebuilt: the server-side cost of the guards.
        store = RedisEventStore.from_url(url)
        d = draft(0)
        keys = _append_keys(run_id)
        fields = _event_args(d.event, d.ts_millis, d.state_id, d.attempt)
        script = store._script
        for _ in range(ops):
            args = ["batch:" + os.urandom(16).hex(), *fields]  # a fresh batch id per call
            t0 = time.perf_counter()
            script(keys=keys, args=args)
            latencies.append(time.perf_counter() - t0)
        store.close()
    else:
        client = redis.Redis.from_url(url)
        stream = f"bench:{{{run_id}}}:plain"
        d = draft(0)
        body = _body(d.event, d.ts_millis, d.state_id, d.attempt)
        for i in range(ops):
            t0 = time.perf_counter()
            client.xadd(stream, {"seq": str(i), "body": body})
            latencies.append(time.perf_counter() - t0)
        client.close()
    return latencies


Row = tuple[str, str, float, float, float]
MODES = ("plain", "lua", "guarded")


def bench_redis(ops_single: int, ops_each: int, procs: int) -> tuple[str, list[Row]]:
    server = RedisServer(appendonly=True, appendfsync="everysec").start()
    rows: list[Row] = []
    try:
        info = redis.Redis.from_url(server.url).info("server")
        version = str(info["redis_version"])
        for mode in MODES:  # warm-up (script load, connections)
            redis_client_loop(server.url, prepare_run(server.url), mode, 50)
        for mode in MODES:
            run_id = prepare_run(server.url)
            t0 = time.perf_counter()
            lat = redis_client_loop(server.url, run_id, mode, ops_single)
            wall = time.perf_counter() - t0
            rows.append(("1 client", mode, len(lat) / wall, pct(lat, 0.5), pct(lat, 0.99)))
        ctx = multiprocessing.get_context("fork")
        for mode in MODES:
            run_id = prepare_run(server.url)
            with ctx.Pool(procs) as pool:
                t0 = time.perf_counter()
                parts = pool.starmap(
                    redis_client_loop, [(server.url, run_id, mode, ops_each)] * procs
                )
                wall = time.perf_counter() - t0
            lat = [x for part in parts for x in part]
            rows.append((f"{procs} procs", mode, len(lat) / wall, pct(lat, 0.5), pct(lat, 0.99)))
            if mode == "guarded":
                store = RedisEventStore.from_url(server.url)
                history = store.read_range(RunId(run_id))
                assert [e.seq for e in history] == list(range(1, len(history) + 1))
                assert len(history) == 2 + procs * ops_each
                store.close()
    finally:
        server.cleanup()
    return version, rows


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
    store = S3ArtifactStore.from_url(url)
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


def print_redis(version: str, redis_rows: list[Row]) -> None:
    print(f"\nredis-server {version} (AOF everysec) — append of one event; latency in ms")
    print(f"{'clients':<10} {'mode':<8} {'ops/s':>9} {'p50':>8} {'p99':>8}")
    by_key = {(r[0], r[1]): r for r in redis_rows}
    for row in redis_rows:
        print(f"{row[0]:<10} {row[1]:<8} {row[2]:9.0f} {fmt_ms(row[3])} {fmt_ms(row[4])}")
    print("\nratios to plain XADD (lua = guarded script alone, guarded = whole append_next)")
    for clients in sorted({r[0] for r in redis_rows}):
        p = by_key[(clients, "plain")]
        for mode in ("lua", "guarded"):
            g = by_key[(clients, mode)]
            print(
                f"{clients:<10} {mode:<8} throughput x{g[2] / p[2]:.2f}   "
                f"p50 x{g[3] / p[3]:.2f}   p99 x{g[4] / p[4]:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10000, help="appends for the single client")
    parser.add_argument("--ops-each", type=int, default=2000, help="appends per process")
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--only", choices=("all", "redis", "s3"), default="all")
    parser.add_argument(
        "--moto", action="store_true", help="also measure moto's S3 server (for comparison)"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    if args.only in ("all", "redis"):
        print_redis(*bench_redis(args.ops, args.ops_each, args.procs))
    if args.only in ("all", "s3"):
        os.environ[S3_ACCESS_ENV] = TEST_S3_ACCESS
        os.environ[S3_SECRET_ENV] = TEST_S3_SECRET
        print_s3("S3 (SeaweedFS `weed mini`)", bench_s3_seaweedfs(S3_SIZES))
        if args.moto:
            print_s3("S3 (moto server, same client and sizes)", bench_s3_moto(S3_SIZES))
    print(f"\ntotal benchmark time {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
