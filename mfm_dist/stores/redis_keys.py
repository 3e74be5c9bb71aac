"""The Redis key layout, defined once (docs/storage.md#redis-key-layout, docs/distributed.md).

The event store, the cluster's coordination, the submission log, the backfill timers and
the worker caches share one Redis; every module that names a key builds it here, so the
layout cannot drift between writers and readers. No Redis import: these are names only.

Every key of a run starts with `mfm:{<run_id>}:` (one hash tag per run: a run's keys hash
to one slot). The Lua scripts receive their keys as `KEYS` and derive only what this module
says they derive: `append.lua` takes the run's tag from its stream key (`run_tag`) and the
listing indexes from `RUN_INDEX_KEY` (`op_index`, `phase_index`, `label_index`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

PREFIX: Final = "mfm:"

# -- global keys -----------------------------------------------------------------------------------
RUN_INDEX_KEY: Final = b"mfm:runs"
"""Sorted set: every run id by `started_ms` (the listing's index; its sub-indexes below)."""
RUN_IDS_KEY: Final = b"mfm:runs:ids"
"""Sorted set: every run id, score 0 (id-prefix lookups by `ZRANGEBYLEX`)."""
INDEX_VERSION_KEY: Final = b"mfm:runs:index_version"
"""Set once every run an earlier version recorded has been indexed."""
JOURNAL_INDEX_KEY: Final = b"mfm:journals"
TIMERS_KEY: Final = "mfm:timers"
"""Sorted set: run id → when its coordinator must look next (ms)."""
BACKFILL_TIMERS_KEY: Final = "mfm:backfill_timers"
"""Sorted set: backfill name → when its next tick is due (ms)."""
SUBMISSION_COUNTS_KEY: Final = "mfm:submissions:counts"
SUBMISSION_REJECTED_KEY: Final = "mfm:submissions:rejected"
TIMING_KEY: Final = "mfm:timing"

# -- the parts of a run's keys ---------------------------------------------------------------------
# The event store's.
EVENTS: Final = "events"
GUARD: Final = "guard"
FACTS: Final = "facts"
BATCHES: Final = "batches"
META: Final = "meta"
# The cluster's (docs/distributed.md#what-every-key-means).
PLAN: Final = "plan"
LOCK: Final = "lock"
DIRTY: Final = "dirty"
LOOKED: Final = "looked"
RESERVED: Final = "reserved"
NOTIFIED: Final = "notified"
HOLDERS: Final = "workers"
LEASE: Final = "lease:"
DELTAS: Final = "deltas"
"""List: the run's delta journal segments (workers/delta_journal.py)."""
DELTAS_UPTO: Final = "deltas_upto"
"""The log seq the delta journal covers."""


def run_tag(run_id: str) -> str:
    """`mfm:{<run_id>}:`, the start of every key of the run."""
    return f"{PREFIX}{{{run_id}}}:"


def run_key(run_id: str, part: str) -> str:
    """`mfm:{<run_id>}:<part>`."""
    return f"{PREFIX}{{{run_id}}}:{part}"


def lease_key(run_id: str, state_id: str) -> str:
    """`mfm:{<run_id>}:lease:<state_id>`: the lease of the state's running attempt."""
    return run_key(run_id, LEASE + state_id)


@lru_cache(maxsize=4096)
def event_keys(run_id: str) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """The event store's keys of a run: events, guard, facts, batches, meta (`batches`:
    earlier versions only)."""
    tag = run_tag(run_id).encode()
    return (
        tag + EVENTS.encode(),
        tag + GUARD.encode(),
        tag + FACTS.encode(),
        tag + BATCHES.encode(),
        tag + META.encode(),
    )


def op_index(op_id: str) -> bytes:
    """Sorted set: the runs of one op, by `started_ms`."""
    return RUN_INDEX_KEY + b":op:" + op_id.encode()


def phase_index(phase: str) -> bytes:
    """Sorted set: the runs in one phase (`Running`, then their final phase)."""
    return RUN_INDEX_KEY + b":phase:" + phase.encode()


def label_index(key: str, value: str) -> bytes:
    """Sorted set: the runs labelled `key=value`."""
    return RUN_INDEX_KEY + b":label:" + f"{key}={value}".encode()


def journal_keys(journal: str) -> list[bytes]:
    """Entries stream, meta hash, batches hash of a journal (one hash tag per journal)."""
    tag = f"{PREFIX}journal:{{{journal}}}:"
    return [(tag + part).encode() for part in ("entries", "meta", "batches")]


def artifact_cache_key(artifact_id: str) -> str:
    """`mfm:art:<id>`: the workers' short-lived copy of a small artifact."""
    return f"{PREFIX}art:{artifact_id}"
