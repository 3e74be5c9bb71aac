"""Run-level results and listings: `RunPhase`, `RunResult`, `RunSummary`, `RunQuery`."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.errors import ErrorInfo
from mfm_dist.ids import ArtifactId, RunId, StateId


class RunPhase(str, Enum):
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class RunResult(BaseModel):
    """What `start`/`resume` return. A failed run is a result, not an exception.

    `error` and `failed_state` explain a `Failed` phase, `error` (`run_cancelled`) a
    `Cancelled` one (null otherwise); they are mfm-dist additions to the reference shape.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: RunId
    phase: RunPhase
    final_snapshot_id: ArtifactId | None = None
    failed_state: StateId | None = None
    error: ErrorInfo | None = None


class RunSummary(BaseModel):
    """One row of `mfm runs`: maintained by the event store as events are appended.

    `labels` are the run's submission labels (its `run_submitted` record, seq 2; `{}`
    without one); `ended_ms` is the time of `RunCompleted` (None while running). Both are
    optional so rows of stores written by earlier versions still decode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: RunId
    op_id: str
    started_ms: int
    phase: RunPhase
    head_seq: int
    labels: dict[str, str] = Field(default_factory=dict)
    ended_ms: int | None = None

    @property
    def duration_ms(self) -> int | None:
        """From `RunStarted` to `RunCompleted`; None while the run has not ended."""
        return None if self.ended_ms is None else max(self.ended_ms - self.started_ms, 0)


class RunQuery(BaseModel):
    """Which runs a listing returns; every given condition must hold (AND).

    Times are on the run's start, as a half-open window: `since_ms <= started_ms <
    until_ms`. Labels must all be present with exactly these values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op_id: str | None = None
    phase: RunPhase | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def is_empty(self) -> bool:
        return (
            self.op_id is None
            and self.phase is None
            and not self.labels
            and self.since_ms is None
            and self.until_ms is None
        )

    def in_window(self, started_ms: int) -> bool:
        if self.since_ms is not None and started_ms < self.since_ms:
            return False
        return self.until_ms is None or started_ms < self.until_ms

    def matches(self, summary: RunSummary) -> bool:
        """The reference semantics every store implements (with its own indexes)."""
        if self.op_id is not None and summary.op_id != self.op_id:
            return False
        if self.phase is not None and summary.phase != self.phase:
            return False
        if any(summary.labels.get(k) != v for k, v in self.labels.items()):
            return False
        return self.in_window(summary.started_ms)
