"""In-process harness for the distributed workers: a real redis-server, a local artifact
directory, the real `Coordinator` and `execute_attempt`, and a dispatcher that records what
would be sent to Celery (tests run the attempts themselves). Its fixtures `env` and `h` (like
`redis_server` and `redis_url` of `servers`) are a pytest plugin (see `pyproject.toml`): a test
asks for them by name."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    stored_and_validated,
)
from mfm_dist.events import EventEnvelope, RunCompleted
from mfm_dist.ids import RunId
from support import dist_ops
from workers.attempts import execute_attempt
from workers.coordinator import Coordinator
from workers.messages import AttemptTask
from workers.outcomes import AttemptOutcome, StepOutcome
from workers.runtime import Runtime
from workers.settings import ClusterSettings

LEASE_TTL_S = 0.4
WAIT_S = 10.0


@dataclass
class FakeDispatcher:
    chords: list[list[AttemptTask]] = field(default_factory=list)
    advances: list[str] = field(default_factory=list)
    queue_depth: int | None = 0
    callbacks: list[tuple[str, str, dict[str, object], str]] = field(default_factory=list)

    def send_chord(self, run_id: str, attempts: list[AttemptTask]) -> None:
        self.chords.append(attempts)

    def send_advance(self, run_id: str) -> None:
        self.advances.append(run_id)

    def attempt_queue_depth(self) -> int | None:
        return self.queue_depth

    def send_callback(
        self, task: str, queue: str, message: dict[str, object], task_id: str
    ) -> None:
        self.callbacks.append((task, queue, message, task_id))

    def take(self) -> list[AttemptTask]:
        out = [t for c in self.chords for t in c]
        self.chords.clear()
        return out


@pytest.fixture
def env(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MFM_EVENTS_URL", redis_url)
    monkeypatch.setenv("MFM_BROKER_URL", redis_url)
    monkeypatch.setenv("MFM_ARTIFACTS_URL", f"file://{tmp_path / 'art'}")
    monkeypatch.setenv("MFM_OPERATIONS", "support.dist_ops")
    monkeypatch.setenv("MFM_LEASE_TTL_S", str(LEASE_TTL_S))
    monkeypatch.setenv("MFM_ARTIFACT_CACHE_TTL_S", "0")
    monkeypatch.delenv("MFM_REDIS_PASSWORD", raising=False)
    dist_ops.COUNTED.clear()
    dist_ops.AFTER_CALL.clear()
    yield
    dist_ops.AFTER_CALL.clear()


@dataclass
class Harness:
    rt: Runtime
    dispatcher: FakeDispatcher
    coordinator: Coordinator

    def submit(self, target: str, run_input: Any, config: RunConfig | None = None) -> str:
        rt = self.rt
        prepared = prepare_run(rt.registry, target, run_input, config or RunConfig())
        manifest_id, initial = stored_and_validated(rt.artifacts, prepared)
        rid, _ = record_run_start(
            rt.events,
            rt.artifacts,
            plan=prepared.plan,
            manifest_id=manifest_id,
            initial_snapshot=initial,
        )
        rt.coord.record_plan(str(rid), prepared.plan.fingerprint())
        return str(rid)

    def run(self, task: AttemptTask) -> AttemptOutcome:
        return execute_attempt(
            self.rt,
            run_id=task.run_id,
            manifest_id=task.manifest_id,
            state_id=task.state_id,
            attempt=task.attempt,
            base_snapshot_id=task.base_snapshot_id,
            plan_fingerprint=task.plan_fingerprint,
        )

    def log(self, rid: str) -> list[EventEnvelope]:
        return self.rt.events.read_range(RunId(rid))

    def drive(self, rid: str, rounds: int = 30) -> list[AttemptOutcome]:
        """Advance and run every dispatched attempt until the run completes; how the
        attempts ended."""
        statuses: list[AttemptOutcome] = []
        for _ in range(rounds):
            if self.coordinator.advance(rid) == StepOutcome.FINISHED:
                return statuses
            statuses.extend(self.run(t) for t in self.dispatcher.take())
        raise AssertionError(f"run did not finish within {rounds} rounds: {statuses}")


@pytest.fixture
def h(env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    from workers.dispatch import CeleryDispatcher

    dispatcher = FakeDispatcher()
    rt = Runtime(ClusterSettings.from_env(), dispatcher=dispatcher)
    coordinator = Coordinator(rt, dispatcher)
    # Wake-ups go to the recording dispatcher, never to a broker — also those of the
    # runtimes the CLI builds for its cluster commands.
    monkeypatch.setattr(
        CeleryDispatcher, "send_advance", lambda _self, run_id: dispatcher.send_advance(run_id)
    )
    yield Harness(rt, dispatcher, coordinator)
    coordinator.close()
    rt.close()


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def completed_status(h: Harness, rid: str) -> str:
    last = h.log(rid)[-1].event
    assert isinstance(last, RunCompleted)
    return str(last.status.value if hasattr(last.status, "value") else last.status)


