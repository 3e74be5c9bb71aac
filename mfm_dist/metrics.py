"""Prometheus metrics of mfm-dist (docs/dashboard.md#metrics).

Every metric is created on first use in the process's default registry, so a process
that never records anything (the CLI) never imports `prometheus_client`, and a process
that must run in multiprocess mode (a prefork Celery worker: `workers.metrics`) can set
`PROMETHEUS_MULTIPROC_DIR` before the first metric exists. Without `prometheus_client`
installed every recording function is a no-op.

Recording never fails the caller: metrics are observations, not part of any protocol.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

log = logging.getLogger("mfm.metrics")

ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CANCEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

NAMES = (
    "mfm_runs_started_total",
    "mfm_runs_finished_total",
    "mfm_submissions_accepted_total",
    "mfm_submissions_rejected_total",
    "mfm_attempt_duration_seconds",
    "mfm_attempt_tasks_total",
    "mfm_retries_total",
    "mfm_orphan_recoveries_total",
    "mfm_lease_losses_total",
    "mfm_coordinator_step_seconds",
    "mfm_cancel_to_terminal_seconds",
    "mfm_queue_depth",
)
"""Every metric a worker exports (the `mfm ui` process adds `mfm_ui_*` and
`mfm_runs_running`); docs/dashboard.md describes each."""


@dataclass(frozen=True)
class Metrics:
    runs_started: Counter
    runs_finished: Counter
    submissions_accepted: Counter
    submissions_rejected: Counter
    attempt_seconds: Histogram
    attempt_tasks: Counter
    retries: Counter
    orphan_recoveries: Counter
    lease_losses: Counter
    attempts_carried: Counter
    step_seconds: Histogram
    cancel_seconds: Histogram


_metrics: Metrics | None = None
_unavailable = False
_lock = threading.Lock()


def get() -> Metrics | None:
    """This process's metrics (created on first use); None without `prometheus_client`."""
    global _metrics, _unavailable
    if _metrics is not None or _unavailable:
        return _metrics
    with _lock:
        if _metrics is not None or _unavailable:
            return _metrics
        try:
            from prometheus_client import Counter, Histogram
        except ImportError:
            _unavailable = True
            return None
        _metrics = Metrics(
            runs_started=Counter(
                "mfm_runs_started", "Runs started (RunStarted recorded), by op.", ["op"]
            ),
            runs_finished=Counter(
                "mfm_runs_finished",
                "Runs finished (RunCompleted recorded), by op and phase.",
                ["op", "phase"],
            ),
            submissions_accepted=Counter(
                "mfm_submissions_accepted",
                "Submissions accepted, by outcome (created: a new run; existing: a repeat).",
                ["outcome"],
            ),
            submissions_rejected=Counter(
                "mfm_submissions_rejected", "Submissions refused, by error code.", ["code"]
            ),
            attempt_seconds=Histogram(
                "mfm_attempt_duration_seconds",
                "Wall time of state attempt tasks that ran a handler, by op and outcome.",
                ["op", "outcome"],
                buckets=ATTEMPT_BUCKETS,
            ),
            attempt_tasks=Counter(
                "mfm_attempt_tasks",
                "Attempt tasks by result (completed, failed, skipped, duplicate, superseded, "
                "cancelled, plan_mismatch, error).",
                ["status"],
            ),
            retries=Counter(
                "mfm_retries",
                "Attempts after the first of a state (after a failure or an orphan recovery) "
                "that ran, by op.",
                ["op"],
            ),
            orphan_recoveries=Counter(
                "mfm_orphan_recoveries",
                "Open attempts closed as orphans (orphan_attempt_recovered), by op.",
                ["op"],
            ),
            lease_losses=Counter(
                "mfm_lease_losses",
                "Attempt leases found lost by their holder (taken over, revoked by a cancel, "
                "or unconfirmed for half a TTL).",
            ),
            attempts_carried=Counter(
                "mfm_attempts_carried",
                "Attempts a worker ran itself right after the one before them closed their "
                "wave, instead of sending them through the broker (one hop per chain step).",
            ),
            step_seconds=Histogram(
                "mfm_coordinator_step_seconds",
                "Wall time of one coordinator step (advance), by trigger and outcome.",
                ["trigger", "outcome"],
                buckets=STEP_BUCKETS,
            ),
            cancel_seconds=Histogram(
                "mfm_cancel_to_terminal_seconds",
                "From a run's cancel request to its RunCompleted{Cancelled}, by op.",
                ["op"],
                buckets=CANCEL_BUCKETS,
            ),
        )
        return _metrics


@contextlib.contextmanager
def _never_fail(what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # an observation must never break the observed
        log.debug("metric %s not recorded: %s", what, type(exc).__name__)


def run_started(op: str) -> None:
    m = get()
    if m is not None:
        with _never_fail("runs_started"):
            m.runs_started.labels(op=op).inc()


def run_finished(op: str, phase: str) -> None:
    m = get()
    if m is not None:
        with _never_fail("runs_finished"):
            m.runs_finished.labels(op=op, phase=phase).inc()


def submissions(outcomes: list[str], rejected_codes: list[str]) -> None:
    m = get()
    if m is None:
        return
    with _never_fail("submissions"):
        for outcome in outcomes:
            m.submissions_accepted.labels(outcome=outcome).inc()
        for code in rejected_codes:
            m.submissions_rejected.labels(code=code).inc()


RAN_HANDLER = ("completed", "failed", "skipped")


def attempt_task(op: str | None, attempt: int, status: str, seconds: float) -> None:
    """One `execute_attempt` task ended with `status` (`completed`, `failed:<code>`, …)."""
    m = get()
    if m is None:
        return
    kind = status.split(":", 1)[0]
    with _never_fail("attempt_task"):
        m.attempt_tasks.labels(status=kind).inc()
        if kind in RAN_HANDLER and op is not None:
            m.attempt_seconds.labels(op=op, outcome=kind).observe(seconds)
            if attempt > 0:
                m.retries.labels(op=op).inc()


def orphans_recovered(op: str, count: int) -> None:
    m = get()
    if m is not None and count > 0:
        with _never_fail("orphan_recoveries"):
            m.orphan_recoveries.labels(op=op).inc(count)


def attempt_carried() -> None:
    m = get()
    if m is not None:
        with _never_fail("attempts_carried"):
            m.attempts_carried.inc()


def lease_lost() -> None:
    m = get()
    if m is not None:
        with _never_fail("lease_losses"):
            m.lease_losses.inc()


def coordinator_step(trigger: str, status: str, seconds: float) -> None:
    m = get()
    if m is not None:
        with _never_fail("coordinator_step"):
            m.step_seconds.labels(trigger=trigger, outcome=status.split(":", 1)[0]).observe(seconds)


def cancel_to_terminal(op: str, seconds: float) -> None:
    m = get()
    if m is not None:
        with _never_fail("cancel_to_terminal"):
            m.cancel_seconds.labels(op=op).observe(max(seconds, 0.0))


def exposition(registry: Any = None) -> tuple[bytes, str]:
    """The text exposition of `registry` (default: this process's) and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(registry if registry is not None else REGISTRY), CONTENT_TYPE_LATEST
