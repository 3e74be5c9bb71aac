"""Building the Celery app from explicit settings (docs/cluster.md#queues-and-tasks).

`create_app(settings)` has no side effect and reads no environment: the worker boot
(`workers.app`, for `celery -A workers.app worker`), `mfm worker`, the CLI's cluster
commands, a Python client's runtime and the tests each build theirs from the settings
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
from celery.signals import celeryd_init, worker_process_init
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from workers import metrics as worker_metrics
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


def worker_app(settings: ClusterSettings) -> Celery:
    """The app of a worker process: metrics set up for multiprocess mode before any metric
    exists, and the exporter of `MFM_METRICS_PORT` connected (`workers.metrics`)."""
    worker_metrics.prepare_multiprocess(settings.metrics_port)  # [metrics hook]
    celery_app = create_app(settings)
    worker_metrics.connect(celery_app, settings.metrics_port, settings.metrics_addr)
    return celery_app


def settings_of(celery_app: Any) -> ClusterSettings | None:
    """The settings an app was built from (None: not built by `create_app`)."""
    try:
        return _SETTINGS.get(celery_app)
    except TypeError:  # not an object a weak reference can point to (None, say)
        return None


def only_control_queue(queues: object, settings: ClusterSettings) -> bool:
    """Does a worker started with these `-Q` queues consume the control queue only?"""
    if isinstance(queues, str):
        names = {q.strip() for q in queues.split(",") if q.strip()}
    elif isinstance(queues, (list, tuple, set)):
        names = {str(q).strip() for q in queues}
    else:
        return False
    return names == {settings.control_queue}


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _worker_boot(instance: Any = None, **_: Any) -> None:
    """A worker is starting (before its pool forks): its process runtime is built from the
    settings of the app it runs, whoever built that app (`workers.app`, `mfm worker`)."""
    settings = settings_of(getattr(instance, "app", None))
    if settings is not None:
        from workers.runtime import configure

        configure(settings, instance.app)


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _control_workers_keep_their_child(
    sender: Any = None, conf: Any = None, options: Any = None, instance: Any = None, **_: Any
) -> None:
    """A worker that only coordinates keeps its pool child: what it accumulates is bounded
    (the cached runs by their plans' states, the snapshot cache by bytes), while a replaced
    child would rebuild each run it coordinates from the log — for a run of 100,000 states
    a step of minutes, re-reading every snapshot, in the middle of the run."""
    if conf is None or not isinstance(options, dict):
        return
    settings = settings_of(getattr(instance, "app", None))
    if settings is None:
        from workers.runtime import process_settings

        settings = process_settings()
    if only_control_queue(options.get("queues"), settings):
        conf.worker_max_tasks_per_child = None


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_runtime(**_: Any) -> None:
    """A forked pool child builds its own connections."""
    from workers.runtime import mark_pool_child, reset_runtime

    reset_runtime()
    mark_pool_child()
