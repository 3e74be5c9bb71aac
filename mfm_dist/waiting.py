"""Waiting for a run's outcome, on any backend: poll its event log until `RunCompleted`.

The one documented way to learn how a run ended without reading store internals
(`mfm wait RUN`; on the cluster also the `on_complete` callback). Faults that heal by
themselves (a store restarting) are ridden out until the deadline: the run goes on without
the waiter, so a blip must not fail the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import result_from_history
from mfm_dist.errors import MfmError, RunError
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.stores.base import EventStore


class RunWaitTimeout(RunError):
    def __init__(self, run_id: str, timeout_s: float) -> None:
        super().__init__(
            "run_wait_timeout", f"run {run_id} did not finish within {timeout_s:g}s", retryable=True
        )


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, MfmError) and exc.info.retryable


def wait_for_result(
    events: EventStore,
    run_id: str,
    timeout_s: float,
    *,
    poll_s: float = 0.1,
    transient: Callable[[BaseException], bool] = _retryable,
) -> RunResult:
    """The run's result once it has finished; `run_wait_timeout` after `timeout_s`.

    A run that does not exist yet is waited for too (a submission may still be on its way);
    `transient(exc)` says which other faults to ride out."""
    rid = RunId(run_id)
    deadline = time.monotonic() + timeout_s
    history: RunHistory | None = None
    while True:
        try:
            if history is None:
                history = RunHistory.load(events, rid)
            else:
                history.refresh(events)
        except MfmError as exc:
            if exc.info.code != "run_not_found" and not transient(exc):
                raise
        except Exception as exc:
            if not transient(exc):
                raise
        if history is not None and history.completed is not None:
            result = result_from_history(history)
            if result.phase != RunPhase.RUNNING:
                return result
        if time.monotonic() >= deadline:
            raise RunWaitTimeout(str(rid), timeout_s)
        time.sleep(poll_s)
