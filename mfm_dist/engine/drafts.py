"""Building kernel-event drafts that several lifecycle paths share (no engine state here,
so any module of the engine can use it without an import cycle)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from mfm_dist.errors import ErrorInfo
from mfm_dist.events import EventDraft, StateFailed
from mfm_dist.ids import StateId


def now_millis() -> int:
    return time.time_ns() // 1_000_000


def failed_drafts(attempts: Iterable[tuple[str, int]], error: ErrorInfo) -> list[EventDraft]:
    """`StateFailed{error}` closing each `(state_id, attempt)`, in the order given."""
    ts = now_millis()
    return [
        EventDraft(
            event=StateFailed(state_id=StateId(state_id), error=error, failure_snapshot_id=None),
            ts_millis=ts,
            state_id=StateId(state_id),
            attempt=attempt,
        )
        for state_id, attempt in attempts
    ]
