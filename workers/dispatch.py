"""Sending the cluster's messages through one explicit Celery app (the coordinator's
`Dispatcher`, wake-ups, callbacks, backfill ticks).

Everything is sent by task name through the app the caller holds — a worker's own app,
or the one a client's runtime built from its settings — never through a module-level
app built at import from whatever the environment said then.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import chord, group

from workers.factory import ADVANCE_TASK, ATTEMPT_TASK, BACKFILL_TICK_TASK
from workers.settings import ClusterSettings

if TYPE_CHECKING:
    from workers.messages import AttemptTask

log = logging.getLogger("mfm.tasks")

WAKE_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}
"""Fail fast: a wake-up that cannot be sent is left to the run's timer."""


def attempt_repr(task: AttemptTask) -> str:
    """What logs, events and Flower show as an attempt task's arguments: the three ids that
    name it. Celery would otherwise build a `saferepr` of every argument, which was about
    an eighth of the time it takes to send a chord."""
    return f"run={task.run_id} state={task.state_id} attempt={task.attempt}"


class CeleryDispatcher:
    """The coordinator's `Dispatcher` on a Celery app: chords, wake-ups, queue depth and
    outcome callbacks, on the queues of `settings`."""

    def __init__(self, app: Any, settings: ClusterSettings) -> None:
        self.app = app
        self.settings = settings

    def send_chord(self, run_id: str, attempts: list[AttemptTask]) -> None:
        """One chord: the attempts (each with its hard time limit, if its state has a
        timeout) and `advance(run_id)` as the join. Nothing carries a countdown: retries
        in backoff are held by the coordinator and sent when due."""
        header = group(
            self.app.signature(
                ATTEMPT_TASK,
                kwargs={
                    "run_id": t.run_id,
                    "manifest_id": t.manifest_id,
                    "state_id": t.state_id,
                    "attempt": t.attempt,
                    "base_snapshot_id": t.base_snapshot_id,
                    "plan_fingerprint": t.plan_fingerprint,
                    "sent_ms": t.sent_ms,
                },
                queue=self.settings.attempt_queue,
                time_limit=t.time_limit_s,
                argsrepr="()",
                kwargsrepr=attempt_repr(t),
            )
            for t in attempts
        )
        body = self.app.signature(
            ADVANCE_TASK,
            args=(run_id,),
            kwargs={"join": True},
            immutable=True,
            queue=self.settings.control_queue,
        )
        chord(header, body).apply_async()

    def send_advance(self, run_id: str) -> None:
        """Enqueue one `advance(run_id)` on the control queue, now. Nobody reads its
        result, so the result store is not touched."""
        self.app.send_task(
            ADVANCE_TASK,
            args=(run_id,),
            queue=self.settings.control_queue,
            retry_policy=WAKE_RETRY_POLICY,
            ignore_result=True,
        )

    def send_backfill_tick(self, name: str) -> None:
        self.app.send_task(
            BACKFILL_TICK_TASK,
            args=(name,),
            queue=self.settings.control_queue,
            retry_policy=WAKE_RETRY_POLICY,
            ignore_result=True,
        )

    def attempt_queue_depth(self) -> int | None:
        """Messages waiting in the attempt queue (None when the broker cannot say)."""
        try:
            with self.app.connection_for_read() as conn:
                declared = conn.default_channel.queue_declare(
                    queue=self.settings.attempt_queue, passive=False
                )
                return int(declared.message_count)
        except Exception as exc:
            log.debug("attempt queue depth unknown: %s", type(exc).__name__)
            return None

    def send_callback(
        self, task: str, queue: str, message: dict[str, object], task_id: str
    ) -> None:
        self.app.send_task(task, args=[message], queue=queue, task_id=task_id)
