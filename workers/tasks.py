"""Celery tasks: `mfm.submit` and `mfm.advance` (control queue), `mfm.execute_attempt`
(attempt queue), and the timer poller every control worker runs. Thin wrappers: the logic
lives in `coordinator`, `attempts`, `submit`, `timers`.

They are shared tasks: they belong to no app built at import, so whichever app a worker
runs (`workers.app`, `mfm worker`, a test's) has them; each task finds its process's
runtime (`workers.runtime.get_runtime`, built from the settings the worker boot bound).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from mfm_dist import metrics
from mfm_dist.errors import MfmError
from mfm_dist.ids import RunId
from mfm_dist.stores.redis_events import RedisEventStore
from workers.attempts import execute_attempt as run_one_attempt
from workers.backfills import poller_hooks, tick
from workers.carry import Carry
from workers.dispatch import CeleryDispatcher
from workers.factory import ATTEMPT_TASK
from workers.faults import is_transient
from workers.inline import coordinate_now, coordinator
from workers.leases import Coordination
from workers.messages import AttemptTask
from workers.metrics import op_of
from workers.outcomes import AttemptOutcome, StepOutcome
from workers.runtime import get_runtime, redis_client
from workers.submit import receive, receive_batch
from workers.timers import TimerPoller

log = logging.getLogger("mfm.tasks")


def send_advance(run_id: str) -> None:
    """Enqueue one `advance(run_id)` on the control queue, now (this process's runtime)."""
    get_runtime().dispatcher.send_advance(run_id)


@shared_task(name="mfm.advance", bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]
def advance(self: Any, run_id: str, watchdog: object = None, join: bool = False) -> str:
    """Coordinate a run one step; the step's outcome in its wire form (`workers.outcomes`).
    A transient fault is logged and left to the run's timer (it looks again within one
    watchdog period); a permanent one ends the run. `join`: a chord's join, skipped when
    nothing was appended since the last look."""
    started = time.perf_counter()  # [metrics hook]
    outcome = StepOutcome.error()
    try:
        outcome = coordinator().advance(run_id, join=join)
        return outcome.wire()
    except MfmError as exc:
        if exc.info.code == "run_not_found" or not is_transient(exc):
            log.warning("advance %s: %s", run_id, exc.info.code)
            return StepOutcome.error(exc.info.code).wire()
        log.warning("advance %s: %s; its timer retries", run_id, exc.info.code)
        return StepOutcome.retry(exc.info.code).wire()
    except Exception as exc:
        if is_transient(exc):
            log.warning("advance %s: %s; its timer retries", run_id, type(exc).__name__)
            return StepOutcome.retry(type(exc).__name__).wire()
        raise
    finally:
        metrics.coordinator_step(
            "join" if join else "wake", outcome.kind.value, time.perf_counter() - started
        )


@shared_task(name=ATTEMPT_TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def execute_attempt(
    self: Any,
    run_id: str,
    manifest_id: str,
    state_id: str,
    attempt: int,
    base_snapshot_id: str,
    plan_fingerprint: str,
    sent_ms: int = 0,
) -> str:
    """One state attempt — and the attempts it carries (workers.carry); the first one's
    outcome in its wire form (`workers.outcomes`). Never raises: a failed header task would
    suppress the chord's join (the coordinator's next look)."""
    began = time.monotonic()
    hard_limit = _hard_limit(self)
    task = AttemptTask(
        run_id, manifest_id, state_id, attempt, base_snapshot_id, plan_fingerprint, sent_ms
    )
    first: AttemptOutcome | None = None
    while True:
        outcome, rt = _attempt(task)
        first = outcome if first is None else first
        if not (
            rt is not None
            and rt.settings.inline_coordination
            and outcome.closed
            and _wave_done(rt, task.run_id, task.state_id, task.attempt)
        ):
            return first.wire()
        carry = Carry(time.monotonic() - began, hard_limit)
        coordinate_now(task.run_id, carry)
        if carry.task is None:
            return first.wire()
        task = carry.task
        metrics.attempt_carried()  # [metrics hook]


def _hard_limit(task: Any) -> float | None:
    """The hard time limit this task's message carried (None: none)."""
    limits = getattr(task.request, "timelimit", None) or (None, None)
    hard = limits[1] if len(limits) > 1 else None
    return float(hard) if hard else None


def _attempt(task: AttemptTask) -> tuple[AttemptOutcome, Any]:
    """Run one attempt; its outcome and the runtime (None if there was none)."""
    started = time.perf_counter()  # [metrics hook]
    rt = None
    try:
        rt = get_runtime()
        outcome = run_one_attempt(
            rt,
            run_id=task.run_id,
            manifest_id=task.manifest_id,
            state_id=task.state_id,
            attempt=task.attempt,
            base_snapshot_id=task.base_snapshot_id,
            plan_fingerprint=task.plan_fingerprint,
            sent_ms=task.sent_ms,
        )
    except Exception as exc:
        code = exc.info.code if isinstance(exc, MfmError) else type(exc).__name__
        log.error("run %s: attempt task for %s failed: %s", task.run_id, task.state_id, code)
        metrics.attempt_task(None, task.attempt, "error", time.perf_counter() - started)
        return AttemptOutcome.error(code), None
    metrics.attempt_task(  # [metrics hook]
        op_of(rt, task.manifest_id),
        task.attempt,
        outcome.kind.value,
        time.perf_counter() - started,
    )
    return outcome, rt



def _wave_done(rt: Any, run_id: str, state_id: str, attempt: int) -> bool:
    """Was this the last outstanding attempt of the run — none open, nothing else
    dispatched? Then its successors may be ready and nobody else is about to look: continue
    inline. In a wide wave most attempts end while others are still queued or running;
    their looks would only contend for the lock, so the wave's last attempt (or the chord's
    join) takes the step."""
    try:
        if rt.coord.release_reservation(run_id, state_id, attempt) > 0:
            return False
        events = rt.events
        if not isinstance(events, RedisEventStore):
            return True  # no cheap count: look
        return events.open_attempt_count(RunId(run_id)) == 0
    except Exception:
        return True  # cannot tell: looking costs less than waiting for the join


@shared_task(name="mfm.submit", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def submit(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Start a run (the submission contract, docs/submission.md): keyword arguments
    `op`, `version`, `input`, `config`, `idempotency_key`, `labels`, `on_complete`. Returns
    `{"run_id", "outcome"}` or `{"error": {...}}` — never raises."""
    rt = get_runtime()
    inline = coordinate_now if rt.settings.inline_coordination else None
    return receive(rt, args, kwargs, self.request.id, inline)


@shared_task(name="mfm.submit_batch", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def submit_batch(self: Any, requests: Any = None, **unknown: Any) -> dict[str, Any]:
    """Many submissions in one message: `requests=[{...}, ...]` → `{"replies": [...]}`."""
    return receive_batch(get_runtime(), requests, self.request.id, sorted(unknown), coordinate_now)


@shared_task(name="mfm.noop", acks_late=True)  # type: ignore[untyped-decorator]
def noop(*_: Any) -> None:
    """Does nothing: the raw-Celery baseline of `scripts/bench_cluster.py`."""
    return None


@shared_task(name="mfm.backfill_tick", acks_late=True)  # type: ignore[untyped-decorator]
def backfill_tick(name: str) -> str:
    """Drive one backfill for a moment (docs/backfills.md); its Redis timer brings the next
    tick. Never raises: a fault is logged and the timer looks again."""
    try:
        return tick(get_runtime(), name)
    except MfmError as exc:
        log.warning("backfill %s: %s; its timer retries", name, exc.info.code)
        return f"error:{exc.info.code}"
    except Exception as exc:
        log.warning("backfill %s: %s; its timer retries", name, type(exc).__name__)
        return f"error:{type(exc).__name__}"


def send_backfill_tick(name: str) -> None:
    rt = get_runtime()
    CeleryDispatcher(rt.app, rt.settings).send_backfill_tick(name)


_poller: TimerPoller | None = None


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_timer_poller(sender: Any = None, **_: Any) -> None:
    """Every control worker polls the run timers (see `workers.timers`)."""
    global _poller
    try:
        queues = set(sender.app.amqp.queues.consume_from)
    except AttributeError:
        return
    try:
        rt = get_runtime()
    except Exception as exc:
        log.error("cannot poll run timers: %s", type(exc).__name__)
        return
    if rt.settings.control_queue not in queues:
        return
    settings = rt.settings
    poll_backfills, arm_backfills = poller_hooks(
        get_runtime, send_backfill_tick, rearm_ms=int(settings.watchdog_s * 1000)
    )
    _poller = TimerPoller(
        Coordination(redis_client(settings.events_url, settings.core.redis)),
        send_advance,
        poll_s=settings.timer_poll_s,
        rearm_ms=int(settings.watchdog_s * 1000),
        extra_polls=[poll_backfills],
        on_restart=[arm_backfills],
    )
    _poller.start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop_timer_poller(**_: Any) -> None:
    if _poller is not None:
        _poller.stop()
