"""The metrics the workers record, in process: the coordinator's hooks against a real
redis-server (the worker harness) — runs finished by phase, orphan recoveries, cancel to
terminal, coordinator steps — and the recording functions themselves."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from mfm_dist import metrics
from mfm_dist.engine.attempt import now_millis
from mfm_dist.engine.cancellation import request_cancel
from mfm_dist.events import EventDraft, StateEntered
from mfm_dist.ids import ArtifactId, RunId, StateId
from support.worker_harness import Harness
from workers.outcomes import StepKind, StepOutcome


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_recording_functions() -> None:
    before = value("mfm_retries_total", op="unit_op")
    metrics.attempt_task("unit_op", 1, "failed:boom", 0.25)
    metrics.attempt_task("unit_op", 0, "duplicate", 0.01)
    metrics.attempt_task(None, 2, "error", 0.01)
    assert value("mfm_retries_total", op="unit_op") == before + 1
    assert value("mfm_attempt_duration_seconds_count", op="unit_op", outcome="failed") >= 1
    assert value("mfm_attempt_tasks_total", status="duplicate") >= 1
    assert value("mfm_attempt_tasks_total", status="error") >= 1
    metrics.submissions(["created", "existing"], ["submission_invalid"])
    assert value("mfm_submissions_rejected_total", code="submission_invalid") >= 1
    metrics.coordinator_step("inline", "dispatched:3", 0.002)
    assert value("mfm_coordinator_step_seconds_count", trigger="inline", outcome="dispatched") >= 1
    text, content_type = metrics.exposition()
    assert b"mfm_lease_losses_total" in text and content_type.startswith("text/plain")


def test_coordinator_counts_finishes_orphans_and_cancels(h: Harness) -> None:
    def finished(op: str, phase: str) -> float:
        return value("mfm_runs_finished_total", op=op, phase=phase)

    done0, orphans0 = finished("chain_demo", "Completed"), value(
        "mfm_orphan_recoveries_total", op="chain_demo"
    )
    rid = h.submit("chain_demo", {"states": 2})
    assert h.coordinator.advance(rid).kind is StepKind.DISPATCHED
    task = h.dispatcher.take()[0]
    # A worker entered the attempt and died: no lease. The coordinator closes the orphan.
    h.rt.events.append_next(RunId(rid), [EventDraft(
        event=StateEntered(state_id=StateId(task.state_id), attempt=task.attempt,
                           base_snapshot_id=ArtifactId(task.base_snapshot_id)),
        ts_millis=now_millis(), state_id=StateId(task.state_id), attempt=task.attempt,
    )])  # fmt: skip
    h.rt.coord.clear_reservations(rid, [task.state_id])
    drive(h, rid)
    assert value("mfm_orphan_recoveries_total", op="chain_demo") == orphans0 + 1
    assert finished("chain_demo", "Completed") == done0 + 1

    cancelled0 = finished("chain_demo", "Cancelled")
    timed0 = value("mfm_cancel_to_terminal_seconds_count", op="chain_demo")
    other = h.submit("chain_demo", {"states": 3})
    assert h.coordinator.advance(other).kind is StepKind.DISPATCHED
    request_cancel(h.rt.events, RunId(other), "unit test", "pytest")
    assert h.coordinator.advance(other) == StepOutcome.CANCELLED
    assert finished("chain_demo", "Cancelled") == cancelled0 + 1
    assert value("mfm_cancel_to_terminal_seconds_count", op="chain_demo") == timed0 + 1
    # a second look at a finished run counts nothing again
    h.coordinator.advance(other)
    assert finished("chain_demo", "Cancelled") == cancelled0 + 1


def drive(h: Harness, rid: str) -> list[Any]:
    import time

    deadline = time.monotonic() + 20
    statuses: list[Any] = []
    while h.coordinator.advance(rid) != StepOutcome.FINISHED:
        assert time.monotonic() < deadline, statuses
        statuses.extend(h.run(t) for t in h.dispatcher.take())
        time.sleep(0.05)
    return statuses
