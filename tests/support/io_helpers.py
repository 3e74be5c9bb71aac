"""Test helpers for the IO layer: an attempt harness over the in-memory stores,
executable test programs, and a loopback JSON HTTP server.

Import them into a test module: `from io_helpers import FactHarness, ...`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mfm_dist.config import RunConfig
from mfm_dist.errors import ErrorCategory, ErrorInfo
from mfm_dist.events import EventDraft, RunStarted, StateEntered, StateFailed
from mfm_dist.ids import ArtifactId, OpId, RunId, StateId
from mfm_dist.io.base import AttemptScope, FactIndex, fact_recorded_event
from mfm_dist.stores.memory import InMemoryArtifactStore, InMemoryEventStore


def _aid(label: str) -> ArtifactId:
    return ArtifactId(hashlib.sha256(label.encode()).hexdigest())


@dataclass
class FactHarness:
    """One run with one state, whose attempts get real `AttemptScope`s.

    `bind_fact` appends `fact_recorded` through `append_next` with the attempt's
    envelope, so the envelope guards check it exactly as the engine's would.
    """

    run_config: RunConfig = field(default_factory=RunConfig)
    events: InMemoryEventStore = field(default_factory=InMemoryEventStore)
    artifacts: InMemoryArtifactStore = field(default_factory=InMemoryArtifactStore)
    facts: FactIndex = field(default_factory=FactIndex)
    run_id: RunId = field(default_factory=RunId.mint)
    state_id: StateId = field(default_factory=lambda: StateId("m.main.a"))
    attempt: int = -1

    def __post_init__(self) -> None:
        started = RunStarted(
            op_id=OpId("m"), manifest_id=_aid("manifest"), initial_snapshot_id=_aid("snapshot")
        )
        self.events.append_next(self.run_id, [EventDraft(event=started, ts_millis=1)])

    def begin_attempt(self) -> AttemptScope:
        """Close the open attempt (as failed, retryable) and enter the next one."""
        drafts: list[EventDraft] = []
        if self.attempt >= 0:
            error = ErrorInfo(
                code="retry", category=ErrorCategory.UNKNOWN, retryable=True, message="retry"
            )
            failed = StateFailed(state_id=self.state_id, error=error)
            drafts.append(self._draft(failed))
        self.attempt += 1
        entered = StateEntered(
            state_id=self.state_id, attempt=self.attempt, base_snapshot_id=_aid("snapshot")
        )
        drafts.append(self._draft(entered))
        self.events.append_next(self.run_id, drafts)
        return self.scope()

    def scope(self, run_config: RunConfig | None = None) -> AttemptScope:
        """A scope for the current attempt (e.g. a second provider sharing the FactIndex)."""
        return AttemptScope(
            run_id=self.run_id,
            state_id=self.state_id,
            attempt=self.attempt,
            run_config=run_config or self.run_config,
            artifacts=self.artifacts,
            facts=self.facts,
            bind_fact=self.bind_fact,
        )

    def _draft(self, event: Any) -> EventDraft:
        return EventDraft(
            event=event, ts_millis=1, state_id=self.state_id, attempt=self.attempt
        )

    def bind_fact(self, key: str, payload_id: ArtifactId) -> None:
        self.events.append_next(self.run_id, [self._draft(fact_recorded_event(key, payload_id))])
        self.facts.add(key, payload_id)

    # --- inspection -----------------------------------------------------------------------

    def fact_events(self) -> list[dict[str, Any]]:
        out = []
        for env in self.events.read_range(self.run_id):
            dumped = env.model_dump(mode="json")
            domain = dumped["event"].get("Domain")
            if domain and domain["name"] == "fact_recorded":
                out.append({**domain["payload"], "attempt": env.attempt})
        return out

    def event_bytes(self) -> list[bytes]:
        return [env.to_bytes() for env in self.events.read_range(self.run_id)]

    def artifact_snapshot(self) -> dict[str, bytes]:
        return {aid: data for aid, (_, data) in self.artifacts._blobs.items()}

    def all_stored_bytes(self) -> bytes:
        return b"\n".join([*self.event_bytes(), *self.artifact_snapshot().values()])


class CountingTransport:
    """A sync transport that counts calls and returns a fixed (or computed) response."""

    def __init__(self, response: Any = None, fn: Callable[[Any], Any] | None = None) -> None:
        self.calls = 0
        self.requests: list[Any] = []
        self._response = response
        self._fn = fn

    def call(self, request: Any) -> Any:
        self.calls += 1
        self.requests.append(request)
        return self._fn(request) if self._fn else self._response


class ExplodingTransport:
    """A transport that must never be used (replay tests)."""

    def __init__(self) -> None:
        self.calls = 0

    def call(self, request: Any) -> Any:
        self.calls += 1
        raise AssertionError("a transport was called")


# --- exec test programs ---------------------------------------------------------------------


def write_program(directory: Path, name: str, body: str, *, mode: int = 0o755) -> Path:
    """Write a `/bin/sh` script (body after the shebang) and set its mode."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def exec_request(program: Path | str, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "kind": "run_program_v1",
        "program_path": str(program),
        "argv": [],
        "stdin_json": None,
        "timeout_ms": 10_000,
        "env": {},
    }
    request.update(overrides)
    return request


# --- loopback HTTP server -------------------------------------------------------------------


Route = Callable[["JsonHandler"], None]


class JsonHandler(BaseHTTPRequestHandler):
    """Dispatches to the server's routes by path; records request headers."""

    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _dispatch(self) -> None:
        self.server.seen_headers.append(dict(self.headers.items()))
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_json(404, {"error": "no route"})
            return
        route(self)

    do_GET = _dispatch
    do_POST = _dispatch

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def send_json(self, status: int, value: Any) -> None:
        self.send_raw(status, json.dumps(value).encode())

    def send_raw(self, status: int, data: bytes, *, content_length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if content_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), JsonHandler)
        self.routes: dict[str, Route] = {}
        self.seen_headers: list[dict[str, str]] = []
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    """A threaded JSON server on a free loopback port; `release` unblocks stalled handlers."""
    server = LoopbackServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def stall_until_released(handler: JsonHandler) -> None:
    """A route that answers only when the test ends (for client timeouts)."""
    handler.server.release.wait(timeout=30)
    handler.send_json(200, {"late": True})


def wait_for_pid_exit(pid: int, attempts: int = 200) -> bool:
    """True once `pid` no longer exists (polling, no timing assertion)."""
    for _ in range(attempts):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
