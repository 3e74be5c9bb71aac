"""Embedded backfills: partition runs started in this process and executed in a local pool
of threads (each run by a `LocalEngine`), with the same submission semantics as the
cluster — the run id of a partition is a function of its idempotency key, its
`run_submitted` record carries the key and the labels, and a second start of the same
key finds the run instead of starting another.

A run whose driving process died (the CLI was killed) is resumed by the pool the next
time a driver sees it running and nobody holds its driver lock (`mfm backfill resume`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.backfill.model import BackfillPlan, partition_request
from mfm_dist.engine import interruptible
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    stored_and_validated,
    submitted_as,
)
from mfm_dist.engine.local import LocalEngine
from mfm_dist.errors import ConcurrencyError, MfmError
from mfm_dist.ids import RunId
from mfm_dist.manifest import BuildInfo
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.submission import (
    SubmissionRecord,
    SubmitRequest,
    fingerprint,
    run_id_for_key,
)

log = logging.getLogger("mfm.backfill")

RunLock = Callable[[str], AbstractContextManager[bool]]
"""`lock(run_id)`: a context that holds the run's driver lock, yielding False when another
live process drives the run (then it is left alone)."""


@contextlib.contextmanager
def _no_lock(run_id: str) -> Iterator[bool]:
    yield True


def accept_locally(
    events: EventStore,
    artifacts: ArtifactStore,
    registry: OperationRegistry,
    request: SubmitRequest,
    *,
    build: BuildInfo | None = None,
) -> tuple[RunId, bool]:
    """Record the start of a keyed submission's run on any stores, without executing it:
    (run id, True) when this call started it, (run id, False) when it existed already.
    The same checks and the same `run_submitted` record as a cluster submission."""
    assert request.idempotency_key is not None
    prepared = prepare_run(
        registry, request.op, request.input, request.config, version=request.version, build=build
    )
    manifest = prepared.manifest
    fp = fingerprint(str(manifest.op_id), manifest.op_version, request.input, request.config)
    rid = RunId(run_id_for_key(request.op, request.idempotency_key))

    record = SubmissionRecord(
        fingerprint=fp,
        idempotency_key=request.idempotency_key,
        labels=request.labels,
        submitted_ms=now_millis(),
    )
    if submitted_as(events, rid, record):
        return rid, False
    manifest_id, initial = stored_and_validated(artifacts, prepared)
    try:
        record_run_start(
            events,
            artifacts,
            plan=prepared.plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
            run_id=rid,
            submission=record,
        )
    except (GuardViolation, ConcurrencyError):
        if not submitted_as(events, rid, record):
            raise
        return rid, False
    return rid, True


class LocalPool:
    """A `Starter` that executes partition runs on `workers` threads of this process."""

    def __init__(
        self,
        events: EventStore,
        artifacts: ArtifactStore,
        registry: OperationRegistry,
        *,
        workers: int,
        lock_run: RunLock = _no_lock,
        engine_factory: Callable[[], LocalEngine] | None = None,
    ) -> None:
        self.events = events
        self.artifacts = artifacts
        self.registry = registry
        self._lock_run = lock_run
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="mfm-backfill")
        self._active: dict[str, Future[None]] = {}
        self._guard = threading.Lock()
        self._build = registry.build_info()
        self._engine_factory = engine_factory or (
            lambda: LocalEngine(self.events, self.artifacts, self.registry)
        )
        self.errors: dict[str, str] = {}
        """run id → error code of a run this pool could not drive (infrastructure faults)."""

    # -- Starter ----------------------------------------------------------------------------
    def start(self, plan: BackfillPlan, index: int, generation: int) -> str:
        rid, _ = accept_locally(
            self.events,
            self.artifacts,
            self.registry,
            partition_request(plan, index, generation),
            build=self._build,
        )
        self._drive(str(rid))
        return str(rid)

    def ensure(self, plan: BackfillPlan, index: int, generation: int, run_id: str) -> None:
        self._drive(run_id)

    # -- the pool ---------------------------------------------------------------------------
    def _drive(self, run_id: str) -> None:
        with self._guard:
            current = self._active.get(run_id)
            if current is not None and not current.done():
                return
            self._active[run_id] = self._pool.submit(self._execute, run_id)

    def _execute(self, run_id: str) -> None:
        try:
            with self._lock_run(run_id) as mine:
                if not mine:
                    return  # another live process drives it
                self._engine_factory().resume(RunId(run_id))  # appends nothing once finished
        except MfmError as exc:
            self.errors[run_id] = exc.info.code
            log.warning("backfill run %s stopped: %s", run_id, exc.info.code)
        except Exception as exc:  # a pool thread must not die silently
            self.errors[run_id] = type(exc).__name__
            log.exception("backfill run %s stopped", run_id)

    def running(self) -> int:
        with self._guard:
            return sum(1 for f in self._active.values() if not f.done())

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the runs in flight; True when none is left."""
        with self._guard:
            futures = [f for f in self._active.values() if not f.done()]
        # In slices, so the main thread still hears a second Ctrl-C (engine.interruptible);
        # a run's own failure is recorded in `errors` already.
        if not interruptible.wait_all(futures, timeout_s):
            return False
        return self.running() == 0

    def shutdown(self, *, wait: bool = True) -> None:
        if not wait:
            self._pool.shutdown(wait=False, cancel_futures=True)
            return
        with self._guard:
            futures = list(self._active.values())
        interruptible.shutdown(self._pool, futures, cancel_futures=True)


class LocalCanceller:
    """Embedded: records each run's cancel request; the process driving the run (this
    pool, or another live `mfm` process) stops it within a fraction of a second."""

    def __init__(self, events: EventStore, name: str, requested_by: str) -> None:
        self.events = events
        self.requested_by = f"backfill {name} ({requested_by})"[:200]

    def cancel(self, run_id: str, reason: str | None) -> None:
        from mfm_dist.engine.cancellation import request_cancel

        request_cancel(
            self.events, RunId(run_id), reason or "backfill cancelled", self.requested_by
        )
