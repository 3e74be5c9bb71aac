"""Run-level results and listings: `RunPhase`, `RunResult`, `RunSummary`."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict

from mfm_dist.errors import ErrorInfo
from mfm_dist.ids import ArtifactId, RunId, StateId


class RunPhase(str, Enum):
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class RunResult(BaseModel):
    """What `start`/`resume` return. A failed run is a result, not an exception.

    `error` and `failed_state` explain a `Failed` phase (null otherwise); they are
    mfm-dist additions to the reference shape.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: RunId
    phase: RunPhase
    final_snapshot_id: ArtifactId | None = None
    failed_state: StateId | None = None
    error: ErrorInfo | None = None


class RunSummary(BaseModel):
    """One row of `mfm runs`: maintained by the event store as events are appended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: RunId
    op_id: str
    started_ms: int
    phase: RunPhase
    head_seq: int
