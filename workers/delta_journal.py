"""The delta journal: the deltas a coordinator computed, kept in Redis so that a cold
coordinator does not read a snapshot per completed state (docs/distributed.md#the-delta-journal).

A coordinator learns a completed state's delta by loading its base and its snapshot and
diffing them. A warm coordinator does this once per state as the log grows; a cold one (a
restarted control worker, another process taking over) had to do it for every state the
run ever completed — 20,000 S3 reads, 43–46 s, in one step holding the run's lock. The
journal keeps what was computed instead, in segments of at least `SEGMENT_MIN` states:

* `mfm:{rid}:deltas` — a list of segments, each `sha256 hex` + canonical JSON
  `{"upto": seq, "states": [[state_id, snapshot_id, base_snapshot_id, writes_json | null,
  [deleted keys]], …]}` for the `StateCompleted` envelopes a coordinator applied with seqs
  after the previous segment's `upto` and up to its own;
* `mfm:{rid}:deltas_upto` — the last segment's `upto`; a segment is appended only if it
  still holds the value its writer read (one script), so two coordinators (a control worker
  and an inline continuation) never journal the same range twice.

The journal is a hint, never the truth: an entry is used only if the log says that state
completed with that snapshot from that base (`RunProgress.expect`), a segment whose hash
does not match is skipped, and anything missing is computed from the snapshots as before.
So a journal that is lost, stale (Redis lost a tail of the log after it was written) or
written by a coordinator that lost its lock costs reads, never correctness. Both keys are
dropped with the run's other coordination keys when it finishes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from mfm_dist.engine.merge import PackedDelta
from mfm_dist.stores.redis_keys import DELTAS, DELTAS_UPTO, run_key

log = logging.getLogger("mfm.coordinator")

SEGMENT_MIN = 256
"""Completed states a coordinator gathers before it journals them (fewer are cheap to
recompute: a cold look reads at most this many snapshots more)."""
TTL_S = 7 * 24 * 3600
"""How long an unfinished run's journal outlives its last write (a finished run's is
deleted with its other coordination keys)."""

_APPEND = """
local upto = redis.call('GET', KEYS[2])
if (upto or '0') ~= ARGV[1] then return upto end
redis.call('RPUSH', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ARGV[2]
"""


@dataclass(frozen=True, slots=True)
class Completion:
    """A completed state as the journal records it."""

    seq: int
    state_id: str
    snapshot_id: str
    base_snapshot_id: str


@dataclass(frozen=True, slots=True)
class Known:
    """A journaled delta: usable for `state_id` only with this snapshot and base."""

    snapshot_id: str
    base_snapshot_id: str
    delta: PackedDelta


class DeltaJournal:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._append = client.register_script(_APPEND)

    def upto(self, run_id: str) -> int:
        """The log seq the journal covers (0: none)."""
        raw = self.client.get(run_key(run_id, DELTAS_UPTO))
        return int(raw) if raw else 0

    def read(self, run_id: str) -> dict[str, Known]:
        """Every journaled delta of the run, by state id (the first entry of a state wins;
        segments that do not hash to their prefix are skipped)."""
        known: dict[str, Known] = {}
        for raw in self.client.lrange(run_key(run_id, DELTAS), 0, -1):
            body = bytes(raw[64:])
            if hashlib.sha256(body).hexdigest().encode() != bytes(raw[:64]):
                log.warning("run %s: a delta journal segment is damaged; skipped", run_id)
                continue
            try:
                states = orjson.loads(body)["states"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("run %s: a delta journal segment is unreadable; skipped", run_id)
                continue
            for sid, snap, base, writes, deletes in states:
                if sid not in known:
                    packed = PackedDelta(
                        None if writes is None else writes.encode(), tuple(deletes)
                    )
                    known[sid] = Known(snap, base, packed)
        return known

    def append(
        self,
        run_id: str,
        expected_upto: int,
        upto: int,
        entries: Iterable[tuple[Completion, PackedDelta]],
    ) -> bool:
        """Add one segment covering the log up to `upto`, if the journal still covers
        `expected_upto` (else another coordinator journaled meanwhile: False)."""
        states = []
        for done, delta in entries:
            writes = delta.writes
            try:
                encoded = orjson.dumps(writes).decode() if writes else None
            except orjson.JSONEncodeError:  # nested deeper than orjson writes: recomputed
                continue
            states.append(
                [
                    done.state_id,
                    done.snapshot_id,
                    done.base_snapshot_id,
                    encoded,
                    sorted(delta.deletes),
                ]
            )
        body = orjson.dumps({"upto": upto, "states": states})
        segment = hashlib.sha256(body).hexdigest().encode() + body
        keys = [run_key(run_id, DELTAS), run_key(run_id, DELTAS_UPTO)]
        done_upto = self._append(
            keys=keys, args=[str(expected_upto), str(upto), segment, TTL_S]
        )
        return done_upto is not None and int(done_upto) == upto
