"""`MFM_TIMING=1` per-phase timers (workers/timing.py): phases, full garbage collections, and
the totals every process flushes to Redis for the benchmarks."""

from __future__ import annotations

import gc

import pytest

from mfm_dist.config import FanOutJoin, RunConfig
from mfm_dist.stores.redis_keys import TIMING_KEY
from support.worker_harness import Harness
from workers.outcomes import StepOutcome
from workers.runtime import redis_client
from workers.timing import Timings, read_timings, reset_timings


def test_full_collections_are_timed_only_when_enabled() -> None:
    on, off = Timings(True), Timings(False)
    try:
        gc.collect(1)  # a young collection is not counted
        assert "gc_full" not in on._counts
        gc.collect()
        assert on._counts["gc_full"] == 1 and on._totals["gc_full"] >= 0
        assert off._counts == {} and off._on_collection not in gc.callbacks
    finally:
        gc.callbacks.remove(on._on_collection)


def test_phases_are_flushed_as_totals_and_counts(redis_url: str) -> None:
    client = redis_client(redis_url)
    try:
        reset_timings(client)
        timings = Timings(True)
        gc.callbacks.remove(timings._on_collection)
        for _ in range(3):
            with timings.phase("look"):
                pass
        timings.add("send", 0.25)
        timings.flush(client)
        timings.flush(client)  # nothing new: nothing added
        totals = read_timings(client)
        assert totals["look"][1] == 3 and totals["send"] == (0.25, 1)
        reset_timings(client)
        assert not client.exists(TIMING_KEY)
    finally:
        client.close()


def test_a_timed_look_names_its_parts(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a long coordinator step goes: loading the log, reading the reservations and the
    leases, settling them, deciding, sending (benchmarks read these with `--timing`)."""
    timings = Timings(True)
    gc.callbacks.remove(timings._on_collection)
    monkeypatch.setattr(h.rt, "timings", timings)
    reset_timings(h.rt.redis)
    rid = h.submit(
        "fanout_demo", {"items": 4}, RunConfig(execution_mode=FanOutJoin(max_concurrency=8))
    )
    assert h.coordinator.advance(rid) == StepOutcome.dispatched(4)
    h.rt.flush_timings()
    totals = read_timings(h.rt.redis)
    parts = ["coord_load", "coord_reservations", "coord_leases", "coord_settle", "coord_decide"]
    assert all(totals[p][1] >= 1 for p in parts), totals
