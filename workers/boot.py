"""The worker boot: a worker process's app, and the Celery signal hooks that bind its
process runtime (docs/configuration.md#workers).

`worker_app(settings)` builds the app a worker runs (`workers.app` for
`celery -A workers.app worker`, and `mfm worker`); importing this module connects the hooks:
when a worker starts (`celeryd_init`, before its pool forks) its process runtime is bound to
the settings of the app it runs, a worker that only coordinates keeps its pool child, and a
forked pool child builds its own connections. Apart from `workers.factory` (which builds
apps and knows nothing of runtimes), so the runtime can build a client's app without
importing the boot.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_process_init

from workers import metrics as worker_metrics
from workers.factory import create_app, settings_of
from workers.runtime import configure, mark_pool_child, process_settings, reset_runtime
from workers.settings import ClusterSettings


def worker_app(settings: ClusterSettings) -> Celery:
    """The app of a worker process: metrics set up for multiprocess mode before any metric
    exists, and the exporter of `MFM_METRICS_PORT` connected (`workers.metrics`)."""
    worker_metrics.prepare_multiprocess(settings.metrics_port)  # [metrics hook]
    celery_app = create_app(settings)
    worker_metrics.connect(celery_app, settings.metrics_port, settings.metrics_addr)
    return celery_app


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
        settings = process_settings()
    if only_control_queue(options.get("queues"), settings):
        conf.worker_max_tasks_per_child = None


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _fresh_runtime(**_: Any) -> None:
    """A forked pool child builds its own connections."""
    reset_runtime()
    mark_pool_child()
