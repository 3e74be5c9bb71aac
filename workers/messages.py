"""What the coordinator sends, and the protocol it sends it through (docs/cluster.md).

An attempt message carries ids only (`AttemptTask`); `Dispatcher` is what the coordinator,
the wake-ups and the completion callbacks go through — Celery's in `workers.dispatch`, a
recorder in tests. Its own module, with no Celery import, so the runtime, the dispatcher
and the carry code can name these types without importing the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class AttemptTask:
    """The ids an attempt task carries — never snapshots or payloads."""

    run_id: str
    manifest_id: str
    state_id: str
    attempt: int
    base_snapshot_id: str
    plan_fingerprint: str
    sent_ms: int
    time_limit_s: float | None = None
    """Hard limit for the task (the state's timeout plus a grace), or None."""


class Dispatcher(Protocol):
    def send_chord(self, run_id: str, attempts: list[AttemptTask]) -> None:
        """Header: the attempts on the attempt queue; body: `advance(run_id)`."""

    def send_advance(self, run_id: str) -> None:
        """One `advance(run_id)` on the control queue, now."""

    def attempt_queue_depth(self) -> int | None:
        """Messages waiting in the attempt queue (None: unknown)."""

    def send_callback(
        self, task: str, queue: str, message: dict[str, object], task_id: str
    ) -> None:
        """`task(message)` on `queue`, with the given task id (a run's `on_complete`)."""
