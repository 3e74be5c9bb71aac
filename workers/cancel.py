"""Cancelling runs on the cluster: record the request in the run's log, then wake its
coordinator, which closes the open attempts and ends the run (docs/cancellation.md)."""

from __future__ import annotations

from mfm_dist.engine.cancellation import CancelOutcome, request_cancel
from mfm_dist.ids import RunId
from workers.runtime import Runtime
from workers.submit import wake


def cancel_run(
    rt: Runtime, run_id: str, reason: str, requested_by: str | None = None
) -> CancelOutcome:
    """Idempotent: a repeated request wakes the coordinator again and appends nothing. If
    the broker is down the run's timer wakes it instead (within one timer poll)."""
    outcome = request_cancel(rt.events, RunId(run_id), reason, requested_by)
    if outcome.status != "finished":
        wake(rt, run_id)
    return outcome
