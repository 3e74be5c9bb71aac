"""Celery tasks: `mfm.submit`, `mfm.advance` and `mfm.sweep` (control queue),
`mfm.execute_attempt` (attempt queue). Thin wrappers: the logic lives in `coordinator`,
`attempts`, `submit`, `sweep`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from celery import chord, group
from celery.signals import worker_ready

from mfm_dist.errors import MfmError, StorageError
from workers.app import ATTEMPT_TASK, app
from workers.attempts import execute_attempt as run_one_attempt
from workers.coordinator import AttemptTask, Coordinator
from workers.faults import is_transient
from workers.runtime import get_runtime
from workers.sweep import SWEEP_KEY, wake_unwatched

log = logging.getLogger("mfm.tasks")

TRANSIENT_RETRY_S = 1.0


class CeleryDispatcher:
    """Sends chords and wake-ups through the Celery app."""

    def send_chord(self, run_id: str, attempts: list[AttemptTask]) -> None:
        """Attempts that may start now form one chord; attempts held back by a retry
        backoff form their own chord per countdown, so a long backoff never delays the
        join (and thus the successors) of the ready ones."""
        settings = get_runtime().settings
        by_countdown: dict[float, list[AttemptTask]] = defaultdict(list)
        for t in attempts:
            by_countdown[max(0.0, t.countdown_s)].append(t)
        for countdown, batch in sorted(by_countdown.items()):
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
                    countdown=countdown or None,
                    queue=settings.attempt_queue,
                )
                for t in batch
            )
            body = advance.si(run_id).set(queue=settings.control_queue)
            chord(header, body).apply_async()

    def send_advance(self, run_id: str, countdown_s: float, *, watchdog: str | None = None) -> None:
        advance.apply_async(
            args=(run_id,),
            kwargs={"watchdog": watchdog} if watchdog else {},
            countdown=countdown_s,
            queue=get_runtime().settings.control_queue,
        )


_coordinator: Coordinator | None = None


def coordinator() -> Coordinator:
    global _coordinator
    rt = get_runtime()
    if _coordinator is None or _coordinator.rt is not rt:
        if _coordinator is not None:
            _coordinator.close()
        _coordinator = Coordinator(rt, CeleryDispatcher())
    return _coordinator


@app.task(name="mfm.advance", bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]
def advance(self: Any, run_id: str, watchdog: str | bool | None = None) -> str:
    """Coordinate a run one step; transient store faults re-enqueue the wake-up.

    `watchdog` is the liveness token (a bool from older messages counts as none)."""
    token = watchdog if isinstance(watchdog, str) and watchdog else None
    try:
        return coordinator().advance(run_id, watchdog=token)
    except StorageError as exc:
        if exc.info.code == "run_not_found" or not is_transient(exc):
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
    """One state attempt; a short status string. Never raises: a failed header task
    would suppress the chord's join (the coordinator's next look)."""
    try:
        rt = get_runtime()
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
    except Exception as exc:
        code = exc.info.code if isinstance(exc, MfmError) else type(exc).__name__
        log.error("run %s: attempt task for %s failed: %s", run_id, state_id, code)
        return f"error:{code}"


@app.task(name="mfm.submit", bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def submit(
    self: Any,
    target: str,
    run_input: Any,
    run_config: dict[str, Any],
    version: str | None = None,
) -> str:
    """Submit a run through the queue (JSON args); returns the run id. Idempotent per
    task id: a redelivered message continues (or just returns) the run it started."""
    from mfm_dist.config import RunConfig
    from workers.submit import submit_run

    return str(
        submit_run(
            target,
            run_input,
            RunConfig.model_validate(run_config),
            version=version,
            submission_id=self.request.id,
        )
    )


def _transient(exc: BaseException) -> bool:
    """Connection faults, and a Redis that is loading, busy (`BUSY` script) or out of
    memory: all heal without touching the run, so the wake-up is retried."""
    return is_transient(exc)


def _send_watchdog(run_id: str, token: str) -> None:
    advance.apply_async(
        args=(run_id,), kwargs={"watchdog": token}, queue=get_runtime().settings.control_queue
    )


@app.task(name="mfm.sweep", acks_late=True)  # type: ignore[untyped-decorator]
def sweep(token: str) -> int:
    """Periodically wake RUNNING runs without a pending watchdog; re-arms itself (only
    the holder of the current sweep token does, so restarts never multiply the chain)."""
    rt = get_runtime()
    client: Any = rt.redis
    if (client.get(SWEEP_KEY) or b"").decode() != token:
        return 0
    period = rt.settings.sweep_s
    ttl_ms = int(rt.settings.watchdog_s * 2000)
    try:
        return wake_unwatched(rt.coord, _send_watchdog, ttl_ms, take_over=False)
    finally:
        _arm_sweep(client, period, holder=token)


def _arm_sweep(client: Any, period_s: float, holder: str | None) -> None:
    import uuid

    fresh = uuid.uuid4().hex
    ttl_ms = int(period_s * 3000)
    if holder is None:
        client.set(SWEEP_KEY, fresh, px=ttl_ms)
    else:
        current = client.get(SWEEP_KEY)
        if current is not None and current.decode() != holder:
            return
        client.set(SWEEP_KEY, fresh, px=ttl_ms)
    sweep.apply_async(
        args=(fresh,), countdown=period_s, queue=get_runtime().settings.control_queue
    )


@app.task(name="mfm.noop", acks_late=True)  # type: ignore[untyped-decorator]
def noop(*_: Any) -> None:
    """Does nothing: the raw-Celery baseline of `scripts/bench_cluster.py`."""
    return None


@worker_ready.connect  # type: ignore[untyped-decorator]
def _wake_running_runs(sender: Any = None, **_: Any) -> None:
    """A control worker that (re)starts wakes every unfinished run: wake-ups that a dead
    control worker held in memory (watchdogs with a countdown) come back only after the
    broker's visibility timeout, and a run must not wait that long. It takes over each
    run's watchdog token, so such old messages exit when they come back. It also
    (re)starts the periodic sweep."""
    import redis

    try:
        queues = set(sender.app.amqp.queues.consume_from)
    except AttributeError:
        return
    try:
        rt = get_runtime()
    except Exception as exc:
        log.warning("could not wake unfinished runs: %s", type(exc).__name__)
        return
    if rt.settings.control_queue not in queues:
        return
    try:
        wake_unwatched(rt.coord, _send_watchdog, int(rt.settings.watchdog_s * 2000), take_over=True)
        _arm_sweep(rt.redis, rt.settings.sweep_s, holder=None)
    except (MfmError, redis.RedisError) as exc:
        log.warning("could not wake unfinished runs: %s", type(exc).__name__)
