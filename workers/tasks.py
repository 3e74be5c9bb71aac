"""Celery tasks: `mfm.submit` and `mfm.advance` (control queue), `mfm.execute_attempt`
(attempt queue). Thin wrappers: the logic lives in `coordinator`, `attempts`, `submit`.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import chord, group
from celery.signals import worker_ready

from mfm_dist.errors import MfmError, StorageError
from workers.app import ATTEMPT_TASK, app
from workers.attempts import execute_attempt as run_one_attempt
from workers.coordinator import AttemptTask, Coordinator
from workers.runtime import get_runtime

log = logging.getLogger("mfm.tasks")

TRANSIENT_RETRY_S = 1.0


class CeleryDispatcher:
    """Sends chords and wake-ups through the Celery app."""

    def send_chord(self, run_id: str, attempts: list[AttemptTask]) -> None:
        settings = get_runtime().settings
        header = group(
            execute_attempt.signature(
                kwargs={
                    "run_id": t.run_id,
                    "manifest_id": t.manifest_id,
                    "state_id": t.state_id,
                    "attempt": t.attempt,
                    "base_snapshot_id": t.base_snapshot_id,
                    "plan_fingerprint": t.plan_fingerprint,
                    "sent_ms": t.sent_ms,
                },
                countdown=t.countdown_s or None,
                queue=settings.attempt_queue,
            )
            for t in attempts
        )
        body = advance.si(run_id).set(queue=settings.control_queue)
        chord(header, body).apply_async()

    def send_advance(self, run_id: str, countdown_s: float, *, watchdog: bool = False) -> None:
        advance.apply_async(
            args=(run_id,),
            kwargs={"watchdog": watchdog},
            countdown=countdown_s,
            queue=get_runtime().settings.control_queue,
        )


_coordinator: Coordinator | None = None


def coordinator() -> Coordinator:
    global _coordinator
    rt = get_runtime()
    if _coordinator is None or _coordinator.rt is not rt:
        _coordinator = Coordinator(rt, CeleryDispatcher())
    return _coordinator


@app.task(name="mfm.advance", bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]
def advance(self: Any, run_id: str, watchdog: bool = False) -> str:
    """Coordinate a run one step; transient store faults re-enqueue the wake-up."""
    try:
        return coordinator().advance(run_id, watchdog=watchdog)
    except StorageError as exc:
        if exc.info.code == "run_not_found" or not exc.info.retryable:
            log.error("advance %s failed: %s", run_id, exc.info.code)
            raise
        log.warning("advance %s: %s; retrying", run_id, exc.info.code)
        raise self.retry(countdown=TRANSIENT_RETRY_S) from None
    except MfmError as exc:
        log.error("advance %s failed: %s", run_id, exc.info.code)
        raise
    except Exception as exc:
        if _transient(exc):
            log.warning("advance %s: %s; retrying", run_id, type(exc).__name__)
            raise self.retry(countdown=TRANSIENT_RETRY_S) from None
        raise


@app.task(name=ATTEMPT_TASK, acks_late=True)  # type: ignore[untyped-decorator]
def execute_attempt(
    run_id: str,
    manifest_id: str,
    state_id: str,
    attempt: int,
    base_snapshot_id: str,
    plan_fingerprint: str,
    sent_ms: int = 0,
) -> str:
    """One state attempt; a short status string (never raises for expected races)."""
    try:
        rt = get_runtime()
    except Exception as exc:
        log.error("worker runtime unavailable: %s", type(exc).__name__)
        return f"error:{type(exc).__name__}"
    return run_one_attempt(
        rt,
        run_id=run_id,
        manifest_id=manifest_id,
        state_id=state_id,
        attempt=attempt,
        base_snapshot_id=base_snapshot_id,
        plan_fingerprint=plan_fingerprint,
        sent_ms=sent_ms,
    )


@app.task(name="mfm.submit", acks_late=True)  # type: ignore[untyped-decorator]
def submit(
    target: str, run_input: Any, run_config: dict[str, Any], version: str | None = None
) -> str:
    """Submit a run through the queue (JSON args); returns the run id."""
    from mfm_dist.config import RunConfig
    from workers.submit import submit_run

    return str(submit_run(target, run_input, RunConfig.model_validate(run_config), version=version))


def _transient(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionError)


@app.task(name="mfm.noop", acks_late=True)  # type: ignore[untyped-decorator]
def noop(*_: Any) -> None:
    """Does nothing: the raw-Celery baseline of `scripts/bench_cluster.py`."""
    return None


SWEEP_LIMIT = 1000


@worker_ready.connect  # type: ignore[untyped-decorator]
def _wake_running_runs(sender: Any = None, **_: Any) -> None:
    """A control worker that (re)starts wakes every unfinished run: wake-ups that a dead
    control worker held in memory (watchdogs with a countdown) come back only after the
    broker's visibility timeout, and a run must not wait that long."""
    from mfm_dist.run import RunPhase
    from mfm_dist.stores.urls import open_event_store
    from workers.leases import Coordination
    from workers.runtime import redis_client
    from workers.settings import Settings

    settings = Settings.from_env()
    try:
        queues = set(sender.app.amqp.queues.consume_from)
    except AttributeError:
        return
    if settings.control_queue not in queues:
        return
    events = open_event_store(settings.events_url)
    client = redis_client(settings.events_url)
    try:
        for summary in events.list_runs(limit=SWEEP_LIMIT):
            if summary.phase == RunPhase.RUNNING:
                rid = str(summary.run_id)
                # The pending watchdog may have died with the old worker: schedule anew.
                Coordination(client).release_watchdog(rid)
                advance.apply_async(args=(rid,), queue=settings.control_queue)
    except (MfmError, redis.RedisError) as exc:
        log.warning("could not wake unfinished runs: %s", type(exc).__name__)
    finally:
        events.close()
        client.close()
