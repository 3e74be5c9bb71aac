"""Building the Celery app from explicit settings (docs/cluster.md#queues-and-tasks).

`create_app(settings)` has no side effect and reads no environment: the worker boot
(`workers.boot.worker_app`, for `celery -A workers.app worker` and `mfm worker`), the CLI's
cluster commands, a Python client's runtime and the tests each build theirs from the settings
they hold. The tasks (`workers.tasks`) are shared tasks, so every app built here runs
them in a worker, and a client's app sends them by name.

JSON only; late acks and re-queue on a lost worker (at-least-once: the guarded event
log and attempt leases make redelivery harmless); prefetch 1 so a long attempt never
holds other messages hostage. Control tasks, submissions and attempts use separate queues
so coordination is never starved by work or by a submission backlog.
"""

from __future__ import annotations

import weakref
from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from workers.settings import ClusterSettings

CONTROL_TASKS = ("mfm.advance", "mfm.backfill_tick")
SUBMIT_TASKS = ("mfm.submit", "mfm.submit_batch")
ADVANCE_TASK = "mfm.advance"
ATTEMPT_TASK = "mfm.execute_attempt"
BACKFILL_TICK_TASK = "mfm.backfill_tick"
_SETTINGS: weakref.WeakKeyDictionary[Any, ClusterSettings] = weakref.WeakKeyDictionary()
"""The settings each app built here was built from (read by the worker boot): kept beside
the app rather than as an attribute set on a Celery object."""


def declared_queues(s: ClusterSettings) -> tuple[Queue, ...]:
    """Each queue bound to its own direct exchange under its own name, so a client that
    publishes by exchange and routing key reaches exactly one queue. The default queue
    (`celery`) is where a plain `send_task("mfm.submit", ...)` lands: submission workers
    consume it too."""
    names = [s.control_queue, s.attempt_queue, s.submit_queue]
    if s.default_queue and s.default_queue not in names:
        names.append(s.default_queue)
    return tuple(
        Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
        for name in names
    )


def create_app(settings: ClusterSettings) -> Celery:
    """A Celery app for these settings (broker, result backend, queues, routes, limits).
    Builds nothing else and connects to nothing until used. It does not make itself
    Celery's *current* app (a worker makes the app it runs current): a client sends
    through the app it holds (`Runtime.app`, `Runtime.dispatcher`), never through the
    shared tasks' proxies, which follow whatever app is current."""
    s = settings
    celery_app = Celery(
        "mfm_dist", broker=s.broker_url, backend=s.result_backend, set_as_current=False
    )
    routes: dict[str, dict[str, str]] = {name: {"queue": s.control_queue} for name in CONTROL_TASKS}
    routes.update({name: {"queue": s.submit_queue} for name in SUBMIT_TASKS})
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
        task_queues=declared_queues(s),
        task_default_queue=s.default_queue or s.submit_queue,
        task_default_exchange=s.default_queue or s.submit_queue,
        task_default_routing_key=s.default_queue or s.submit_queue,
        # Undecodable messages (e.g. pickle) get a structured reply, not a silent drop.
        worker_consumer="workers.consumer:MfmConsumer",
        task_routes=routes,
        result_expires=3600,
        task_track_started=False,
        worker_hijack_root_logger=False,
        # Opt-in (MFM_TASK_EVENTS=1): task events for `celery events` and Flower.
        worker_send_task_events=s.task_events,
        task_send_sent_event=s.task_events,
        imports=("workers.tasks",),
    )
    _SETTINGS[celery_app] = s
    return celery_app


def settings_of(celery_app: Any) -> ClusterSettings | None:
    """The settings an app was built from (None: not built by `create_app`)."""
    try:
        return _SETTINGS.get(celery_app)
    except TypeError:  # not an object a weak reference can point to (None, say)
        return None
