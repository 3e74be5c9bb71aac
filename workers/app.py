"""The Celery app: `celery -A workers.app worker -Q mfm.control -c 1` (coordination) and
`celery -A workers.app worker -Q mfm.attempts` (state attempts).

JSON only; late acks and re-queue on a lost worker (at-least-once: the guarded event
log and attempt leases make redelivery harmless); prefetch 1 so a long attempt never
holds other messages hostage. Control tasks and attempts use separate queues so
coordination is never starved by work (CONTRACT §11).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue  # type: ignore[attr-defined]

from workers.settings import Settings

CONTROL_TASKS = ("mfm.submit", "mfm.advance")
ATTEMPT_TASK = "mfm.execute_attempt"


def create_app(settings: Settings | None = None) -> Celery:
    s = settings or Settings.from_env()
    celery_app = Celery("mfm_dist", broker=s.broker_url, backend=s.result_backend)
    routes: dict[str, dict[str, str]] = {name: {"queue": s.control_queue} for name in CONTROL_TASKS}
    routes[ATTEMPT_TASK] = {"queue": s.attempt_queue}
    celery_app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Bounds what a long-lived prefork child accumulates (caches, fragmentation).
        worker_max_tasks_per_child=s.max_tasks_per_child or None,
        broker_transport_options={"visibility_timeout": s.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": s.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_queues=(Queue(s.control_queue), Queue(s.attempt_queue)),  # type: ignore[no-untyped-call]
        task_default_queue=s.control_queue,
        task_routes=routes,
        result_expires=3600,
        task_track_started=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        imports=("workers.tasks",),
    )
    return celery_app


app = create_app()


def configure_app(settings: Settings) -> None:
    """Point the (already imported) app at other URLs/queues — for tests and tools that
    set the environment after import."""
    fresh = create_app(settings)
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        broker_transport_options=fresh.conf.broker_transport_options,
        result_backend_transport_options=fresh.conf.result_backend_transport_options,
        task_queues=fresh.conf.task_queues,
        task_default_queue=fresh.conf.task_default_queue,
        task_routes=fresh.conf.task_routes,
        worker_max_tasks_per_child=fresh.conf.worker_max_tasks_per_child,
    )


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_runtime(**_: Any) -> None:
    """A forked pool child builds its own connections."""
    from workers.runtime import mark_pool_child, reset_runtime

    reset_runtime()
    mark_pool_child()
