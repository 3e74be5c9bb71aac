"""The worker boot: `celery -A workers.app worker -Q mfm.control -c 1` (coordination),
`-Q mfm.submit,celery` (submissions) and `-Q mfm.attempts` (state attempts).

This module is a program's entry point: it reads the environment once
(`ClusterSettings.from_env()`, docs/configuration.md) and builds the module-level `app`
Celery's `-A` option needs. When a worker starts, its process runtime is bound to the
settings of the app it runs (`workers.boot`). Everything else — `mfm worker`, the
CLI's cluster commands, clients, tests — builds its own app from the settings it holds
with `create_app(settings)`, never this one: an app built at import time keeps whatever
the environment said then.
"""

from __future__ import annotations

from workers.boot import _control_workers_keep_their_child, only_control_queue, worker_app
from workers.factory import (
    ATTEMPT_TASK,
    CONTROL_TASKS,
    SUBMIT_TASKS,
    create_app,
    declared_queues,
)
from workers.settings import ClusterSettings

__all__ = [
    "ATTEMPT_TASK",
    "CONTROL_TASKS",
    "SUBMIT_TASKS",
    "_control_workers_keep_their_child",
    "app",
    "create_app",
    "declared_queues",
    "only_control_queue",
    "settings",
]

settings = ClusterSettings.from_env()
app = worker_app(settings)
