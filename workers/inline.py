"""This process's coordinator, and the inline continuation that uses it (docs/cluster.md).

Its own module because two callers share it: the Celery tasks (`advance`, the attempt that
closes its wave, a submission) and the backfill driver starting partition runs. Kept out of
`workers.tasks`, so the backfill code does not import the task module that imports it.
"""

from __future__ import annotations

import logging
import time

from mfm_dist import metrics
from mfm_dist.errors import MfmError
from workers.carry import Carry
from workers.coordinator import Coordinator
from workers.outcomes import StepOutcome
from workers.runtime import get_runtime

log = logging.getLogger("mfm.tasks")

_coordinator: Coordinator | None = None


def coordinator() -> Coordinator:
    """The coordinator of this process's runtime (a new one when the runtime changed)."""
    global _coordinator
    rt = get_runtime()
    if _coordinator is None or _coordinator.rt is not rt:
        if _coordinator is not None:
            _coordinator.close()
        _coordinator = Coordinator(rt, rt.dispatcher)
    return _coordinator


def coordinate_now(run_id: str, carry: Carry | None = None) -> None:
    """Take the run's next coordination step in this process, now (inline continuation):
    the attempt that just ended, or the submission that just started a run, dispatches
    what became ready without a broker hop. If another process is coordinating the run,
    it is marked dirty and that process looks again; any failure is left to the run's
    timer and to the chord's join."""
    started = time.perf_counter()  # [metrics hook]
    outcome = StepOutcome.error()
    try:
        outcome = coordinator().advance_inline(run_id, carry)
    except Exception as exc:
        code = exc.info.code if isinstance(exc, MfmError) else type(exc).__name__
        log.warning("run %s: inline coordination failed (%s); its timer retries", run_id, code)
    finally:
        metrics.coordinator_step("inline", outcome.kind.value, time.perf_counter() - started)
