#!/usr/bin/env python3
"""Benchmark canonical JSON (not a test): MB/s of the project's functions against the
reference `rfc8785` and `orjson` (sorted keys), all in one process so load on the machine
cancels out of the ratios.

Per shape, in MB of canonical bytes per second (best of several rounds):

* `hash`: `artifact_id_of_json(value)` — every check, canonical bytes, SHA-256;
  baselines `rfc8785.dumps` + SHA-256 and `orjson.dumps(OPT_SORT_KEYS)` + SHA-256
  (no checks at all).
* `read`: `parse_canonical(bytes)` — the verified read of every artifact, returning the
  value; baselines a bare `orjson.loads` (no checks, no canonical comparison) and the
  reference's canonical read `rfc8785.dumps(orjson.loads(bytes)) == bytes` (no rules).
* `bcheck`: `check_canonical_bytes(bytes)` — the same verified read without the value
  (what `verify` runs on fact payloads); same baselines.
* `check`: `check_json(value)` alone.

Every project column is measured for this checkout ("now"), for its pure-Python reference
path ("py": what runs where the compiled checks could not be built) and, with
`--before REV` (e.g. `--before main`), for `mfm_dist/canonical.py` as of that git
revision, loaded from `git show` into the same process.

Shapes: the 3.1 MB context of issue 10 (20,000 keys of small objects with strings), deep
nesting, many small integers, long strings with non-ASCII text. Run:
`.venv/bin/python scripts/bench_canonical.py [--before main] [--quick]`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import rfc8785  # noqa: E402

from mfm_dist import canonical  # noqa: E402

SORTED = orjson.OPT_SORT_KEYS


def shape_context(rng: random.Random) -> Any:
    """Issue 10's 3.1 MB context: 20,000 keys of small objects with strings."""
    statuses = ["done", "pending", "failed", "skipped"]
    return {
        f"item_{i:05d}": {
            "id": i,
            "name": f"item number {i}",
            "status": rng.choice(statuses),
            "tags": ["alpha", "beta", f"t{i % 7}"],
            "owner": "team-x",
            "note": "a short note",
            "parent": None,
        }
        for i in range(20_000)
    }


def shape_deep(rng: random.Random) -> Any:
    """200 chains of objects nested 200 deep (orjson's limit is 254, the rule's 512)."""
    chains = []
    for c in range(200):
        node: Any = {"leaf": f"end of chain {c}", "n": c}
        for d in range(200):
            node = {"child": node, "depth": d, "label": f"level {d}"}
        chains.append(node)
    return chains


def shape_ints(rng: random.Random) -> Any:
    """500,000 small integers in lists of 100 (plus a few at the range limits)."""
    values = [rng.randint(-1000, 100_000) for _ in range(500_000)]
    values[:2] = [2**53 - 1, -(2**53 - 1)]
    return [values[i : i + 100] for i in range(0, len(values), 100)]


def shape_unicode(rng: random.Random) -> Any:
    """200 strings of ~10,000 characters mixing ASCII, accents, CJK, emoji and escapes."""
    pieces = [
        "Grüße aus Köln, ",
        "naïve café ",
        "数据处理管道 ",
        "🙂🚀 ",
        "plain ascii words ",
        'q"\\\n',
    ]
    return {f"doc_{i:03d}": "".join(rng.choice(pieces) for _ in range(1_000)) for i in range(200)}


SHAPES: dict[str, Callable[[random.Random], Any]] = {
    "context 20k keys": shape_context,
    "deep nesting": shape_deep,
    "small ints": shape_ints,
    "long unicode strings": shape_unicode,
}


def best_seconds(
    fns: dict[str, Callable[[], object]], budget: float, min_rounds: int = 3
) -> dict[str, float]:
    """Best time of each function, run round-robin (one call of each per round) so that a
    change of load on the shared machine hits every function of the group alike."""
    for fn in fns.values():
        fn()  # warm up
    best = dict.fromkeys(fns, float("inf"))
    rounds = 0
    start = time.perf_counter()
    while rounds < min_rounds or (time.perf_counter() - start < budget and rounds < 200):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def load_canonical_at(rev: str) -> ModuleType:
    """`mfm_dist/canonical.py` as of git revision `rev`, imported as a separate module."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:mfm_dist/canonical.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"canonical_{rev.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"_canonical_before_{abs(hash(rev))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def orjson_sha(value: Any) -> str:
    """The baseline: orjson with sorted keys, hashed."""
    return hashlib.sha256(orjson.dumps(value, option=SORTED)).hexdigest()


def rfc8785_sha(value: Any) -> str:
    """The reference encoder, hashed."""
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def rfc8785_read(data: bytes) -> bool:
    """The reference's canonical read: decode, re-encode with `rfc8785`, compare."""
    return rfc8785.dumps(orjson.loads(data)) == data


def python_only(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with the compiled pass switched off: the pure-Python reference path."""

    def run() -> object:
        saved = canonical._jsonscan
        canonical._jsonscan = None  # type: ignore[assignment]
        try:
            return fn()
        finally:
            canonical._jsonscan = saved

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REV", help="also measure canonical.py at REV")
    parser.add_argument("--quick", action="store_true", help="shorter rounds")
    parser.add_argument("--no-python", action="store_true", help="skip the pure-Python path")
    args = parser.parse_args()
    budget = 1.0 if args.quick else 4.0
    slow_budget = 0.5 if args.quick else 2.0
    before = load_canonical_at(args.before) if args.before else None
    if canonical._jsonscan is None:
        print("NOTE: mfm_dist._jsonscan is not built; 'now' runs the pure-Python path")

    rows: list[tuple[str, str, str, float, float, float]] = []
    for name, make in SHAPES.items():
        value = make(random.Random(10))
        data = canonical.canonical_bytes(value)
        assert data == rfc8785.dumps(value), name
        assert canonical.artifact_id_of_json(value) == hashlib.sha256(data).hexdigest()
        mb = len(data) / 1e6
        # Fast group: this checkout's functions and the orjson baselines, interleaved.
        fast: dict[str, Callable[[], object]] = {
            "orjson+sha": partial(orjson_sha, value),
            "orjson.loads": partial(orjson.loads, data),
            "hash now": partial(canonical.artifact_id_of_json, value),
            "read now": partial(canonical.parse_canonical, data),
            "bcheck now": partial(canonical.check_canonical_bytes, data),
            "check now": partial(canonical.check_json, value),
        }
        # Slow group: the reference encoder and the pure-Python paths.
        slow: dict[str, Callable[[], object]] = {
            "rfc8785+sha": partial(rfc8785_sha, value),
            "rfc8785 read": partial(rfc8785_read, data),
        }
        if before is not None:
            m: Any = before
            # a revision without the value-free check: its read, value discarded
            before_check = getattr(m, "check_canonical_bytes", m.parse_canonical)
            slow |= {
                "hash before": partial(m.artifact_id_of_json, value),
                "read before": partial(m.parse_canonical, data),
                "bcheck before": partial(before_check, data),
                "check before": partial(m.check_json, value),
            }
        if not args.no_python:
            slow |= {
                "hash py": python_only(partial(canonical.artifact_id_of_json, value)),
                "read py": python_only(partial(canonical.parse_canonical, data)),
                "bcheck py": python_only(partial(canonical.check_canonical_bytes, data)),
                "check py": python_only(partial(canonical.check_json, value)),
            }
        secs = best_seconds(fast, budget) | best_seconds(slow, slow_budget, min_rounds=2)
        for label in ("now", "before", "py"):
            for what, base_ref, base_orj in [
                ("hash", "rfc8785+sha", "orjson+sha"),
                ("read", "rfc8785 read", "orjson.loads"),
                ("bcheck", "rfc8785 read", "orjson.loads"),
                ("check", "", ""),
            ]:
                key = f"{what} {label}"
                if key not in secs:
                    continue
                s = secs[key]
                vs_ref = secs[base_ref] / s if base_ref else 0.0
                vs_orj = secs[base_orj] / s if base_orj else 0.0
                rows.append((name, what, label, mb / s, vs_ref, vs_orj))
        print(
            f"# {name}: {mb:.2f} MB canonical; rfc8785+sha256 {mb / secs['rfc8785+sha']:.1f} MB/s,"
            f" orjson sorted+sha256 {mb / secs['orjson+sha']:.0f} MB/s,"
            f" orjson.loads {mb / secs['orjson.loads']:.0f} MB/s,"
            f" rfc8785 read {mb / secs['rfc8785 read']:.1f} MB/s",
            flush=True,
        )

    print()
    print(f"{'shape':<22} {'what':<6} {'code':<7} {'MB/s':>8} {'× rfc8785':>10} {'× orjson':>9}")
    for name, what, label, mbs, vs_ref, vs_orj in rows:
        ref = f"{vs_ref:10.2f}" if vs_ref else f"{'':>10}"
        orj = f"{vs_orj:9.2f}" if vs_orj else f"{'':>9}"
        print(f"{name:<22} {what:<6} {label:<7} {mbs:8.1f} {ref} {orj}")
    print()
    print("× rfc8785: time of rfc8785.dumps+sha256 (hash) or of the rfc8785 read (loads, dumps,")
    print("  compare: read, bcheck) / time of the project's function")
    print("× orjson: time of orjson sorted+sha256 (hash) or bare orjson.loads (read, bcheck) /")
    print("  time of the project's function")


if __name__ == "__main__":
    main()
