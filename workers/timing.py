"""Optional per-phase timers (`MFM_TIMING=1`) for the benchmark's per-state breakdown.

Each process accumulates `phase -> (seconds, count)` and flushes it to the Redis hash
`mfm:timing` after each task (one pipelined round trip), so a benchmark can read the
totals of every worker. Off by default: then `phase()` costs one attribute check.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mfm_dist.stores.redis_keys import TIMING_KEY


class Timings:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._totals: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        # Re-entrant: a collection (timed below) can start while this thread holds it.
        self._lock = threading.RLock()
        self._gc_started: float | None = None
        if enabled:
            gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        """Time the cyclic collector's full (generation 2) collections as `gc_full`: on a
        coordinator holding a 100,000-state run they traverse millions of objects, inside
        whatever step happens to allocate."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.add("gc_full", time.perf_counter() - self._gc_started)
            self._gc_started = None

    def add(self, name: str, seconds: float) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._totals[name] = self._totals.get(name, 0.0) + seconds
            self._counts[name] = self._counts.get(name, 0) + 1

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def flush(self, client: Any) -> None:
        """Add this process's totals to `mfm:timing` and reset them."""
        if not self.enabled:
            return
        with self._lock:
            totals, counts = self._totals, self._counts
            self._totals, self._counts = {}, {}
        if not totals:
            return
        pipe = client.pipeline(transaction=False)
        for name, seconds in totals.items():
            pipe.hincrbyfloat(TIMING_KEY, f"{name}:s", seconds)
            pipe.hincrby(TIMING_KEY, f"{name}:n", counts[name])
        pipe.execute()


def read_timings(client: Any) -> dict[str, tuple[float, int]]:
    """`phase -> (total seconds, count)` accumulated by every process."""
    raw = {k.decode(): v.decode() for k, v in client.hgetall(TIMING_KEY).items()}
    out: dict[str, tuple[float, int]] = {}
    for key, value in raw.items():
        name, kind = key.rsplit(":", 1)
        seconds, count = out.get(name, (0.0, 0))
        if kind == "s":
            seconds = float(value)
        else:
            count = int(value)
        out[name] = (seconds, count)
    return out


def reset_timings(client: Any) -> None:
    client.delete(TIMING_KEY)
