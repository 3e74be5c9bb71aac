"""Worker metrics and the attempt-holder record (docs/dashboard.md#metrics).

**Exporting.** With `MFM_METRICS_PORT` set (the settings' `metrics_port`), the worker's
main process serves the Prometheus text format at
`http://MFM_METRICS_ADDR:MFM_METRICS_PORT/metrics` (address `127.0.0.1` by default).
Celery's prefork pool runs tasks in child processes, so metrics use `prometheus_client`'s
multiprocess mode: every process writes its values to files in `PROMETHEUS_MULTIPROC_DIR`
and the main process adds them up at each scrape. That variable is `prometheus_client`'s
own configuration, which it reads from the process environment (and pool children
inherit): so this module is the one place that reads and sets it — when it is unset, the
worker boot (`prepare_multiprocess`, before any metric exists) sets it to a fresh private
directory; a directory given by the deployment must be emptied before the worker starts
(stale files would add old values). A replaced pool child's
counts stay in the sums (counters never go back). The queue depths (`mfm_queue_depth`) are
asked from the broker at scrape time.

**Attempt holders.** The lease script (`workers.leases`) records, per run, which process
(`host:pid`) took each attempt's lease (`mfm:{rid}:workers`, field `<state_id>|<attempt>`,
kept a week): leases vanish when attempts end, and the dashboard's timeline shows who ran
what afterwards. `read_holders` reads them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from workers.leases import holders_key

if TYPE_CHECKING:
    from mfm_dist.engine.history import RunHistory

log = logging.getLogger("mfm.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess(port: int) -> str | None:
    """Make this process (and the pool children it forks) record metrics in multiprocess
    mode when the worker exports them (`port` > 0); returns the directory (None: not
    exporting)."""
    if not port:
        return None
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        directory = tempfile.mkdtemp(prefix="mfm-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        creator = os.getpid()

        def remove() -> None:  # forked pool children inherit this: only the creator removes
            if os.getpid() == creator:
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)
    os.makedirs(directory, exist_ok=True)
    with contextlib.suppress(ImportError):
        # If prometheus_client was imported before the variable was set, switch its value
        # class now (no metric exists yet: `mfm_dist.metrics` creates them on first use).
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


# -- the exporter ----------------------------------------------------------------------------------


class QueueDepthCollector:
    """`mfm_queue_depth{queue}`: messages waiting in each queue, asked at scrape time."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "mfm_queue_depth", "Messages waiting in a broker queue.", labels=["queue"]
        )
        try:
            depths = self._depths()
        except Exception as exc:
            log.debug("queue depths unavailable: %s", type(exc).__name__)
            depths = {}
        for queue, depth in sorted(depths.items()):
            family.add_metric([queue], depth)
        yield family


def broker_queue_depths(app: Any, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each of `queues` on the Celery app's broker (queues the broker
    does not know yet are left out)."""
    out: dict[str, int] = {}
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        for name in queues:
            try:
                declared = channel.queue_declare(queue=name, passive=True)
            except Exception:
                continue
            out[name] = int(declared.message_count)
    return out


def worker_registry(depths: Callable[[], dict[str, int]] | None) -> Any:
    """The registry a worker's exporter serves: every process's values (multiprocess mode)
    or this process's, plus the queue depths."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    if depths is not None:
        registry.register(QueueDepthCollector(depths))
    return registry


_server: Any = None


def start_exporter(
    app: Any, queues: Callable[[], Iterable[str]], port: int, addr: str = "127.0.0.1"
) -> int | None:
    """Serve `/metrics` on `addr:port` from this (the worker's main) process; the bound
    port, or None (`port` 0: no exporter)."""
    global _server
    if not port or _server is not None:
        return None
    from prometheus_client import start_http_server

    registry = worker_registry(lambda: broker_queue_depths(app, queues()))
    _server = start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return port


def process_exited(pid: int) -> None:
    """A pool child ended: drop its live-gauge files (counters and histograms stay)."""
    if os.environ.get(MULTIPROC_ENV):
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def connect(app: Any, port: int, addr: str = "127.0.0.1") -> None:
    """Start the exporter (`port` 0: none) in the worker's main process (before the pool
    forks) and clean up after each pool child (Celery signals)."""
    from celery.signals import worker_init, worker_process_shutdown

    def queue_names() -> list[str]:
        return [q.name for q in app.conf.task_queues or ()]

    def on_init(**_: Any) -> None:
        try:
            start_exporter(app, queue_names, port, addr)
        except Exception as exc:  # metrics never stop a worker
            log.error("metrics exporter not started: %s", exc)

    def on_child_exit(pid: int | None = None, **_: Any) -> None:
        process_exited(pid if pid is not None else os.getpid())

    worker_init.connect(on_init, weak=False)
    worker_process_shutdown.connect(on_child_exit, weak=False)


# -- hooks called by the tasks ---------------------------------------------------------------------


def op_of(rt: Any, manifest_id: str) -> str | None:
    """The op id of a run's plan (the runtime caches it by manifest; None if unreadable)."""
    try:
        return str(rt.run_context(manifest_id).plan.op_id)
    except Exception:
        return None


def run_finished(
    history: RunHistory, phase: str, *, cancelled_at_ms: int | None = None
) -> None:
    """The coordinator appended a run's `RunCompleted` (with `phase`); for a cancelled run,
    also the time from its cancel request to `cancelled_at_ms`."""
    from mfm_dist import metrics

    op = str(history.started.op_id)
    metrics.run_finished(op, phase)
    seq = history.cancel_seq
    if cancelled_at_ms is None or seq is None:
        return
    requested = next((e.ts_millis for e in history.envelopes if e.seq == seq), None)
    if requested is not None:
        metrics.cancel_to_terminal(op, (cancelled_at_ms - requested) / 1000.0)


def read_holders(client: Any, run_id: str) -> dict[tuple[str, int], str]:
    """(state_id, attempt) → `host:pid` of every attempt whose lease a worker took."""
    out: dict[tuple[str, int], str] = {}
    for field, value in client.hgetall(holders_key(run_id)).items():
        text = field.decode() if isinstance(field, bytes) else str(field)
        state_id, _, attempt = text.rpartition("|")
        with contextlib.suppress(ValueError):
            out[(state_id, int(attempt))] = (
                value.decode() if isinstance(value, bytes) else str(value)
            )
    return out
