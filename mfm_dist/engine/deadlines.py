"""State timeouts: how long one attempt may run, and running a handler against that limit.

A handler that never returns must not keep its run `Running` forever. The effective
timeout of a state is its own `StateMeta.timeout`, else the run config's `state_timeout`,
capped by the deployment's maximum (a setting of the program that runs attempts). With a
timeout, the handler runs on its own daemon thread and the attempt waits for it at most
that long; past the deadline the attempt is recorded as a retryable
`StateFailed{state_timeout}` and the handler is *abandoned*: its main task is cancelled
(enough for handlers that await), its IO fence is closed so it can make no further
transport call, fact binding or domain event, and whatever it writes to its staged
context is discarded. A handler stuck in blocking code keeps its thread until it returns:
the embedded engine leaves it behind as a daemon thread, a cluster worker replaces the
pool process that holds it (workers/attempts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from mfm_dist.config import RunConfig
from mfm_dist.errors import ErrorCategory, MfmError
from mfm_dist.state import StateMeta

STATE_TIMEOUT_CODE = "state_timeout"


class StateTimeout(MfmError):
    """The attempt outlived its deadline (retryable: the retry policy decides)."""

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(
            STATE_TIMEOUT_CODE,
            f"the attempt did not finish within its timeout of {timeout_ms} ms",
            category=ErrorCategory.UNKNOWN,
            retryable=True,
        )


def effective_timeout_ms(
    meta: StateMeta, run_config: RunConfig, max_timeout_ms: int | None
) -> int | None:
    """The state's timeout (own, else the run's default), capped by the deployment's."""
    own = meta.timeout if meta.timeout is not None else run_config.state_timeout
    timeout = own.total_millis if own is not None else None
    if max_timeout_ms is not None:
        timeout = max_timeout_ms if timeout is None else min(timeout, max_timeout_ms)
    return timeout


class StopSignal:
    """Stops running attempts from outside: their run was cancelled (the embedded engine),
    or the worker lost the attempt's lease (a cluster worker). An attempt whose handler is
    running waits on it, so a handler that never looks at its IO is still abandoned at once,
    exactly as at its deadline; `reason` is what the attempt then raises."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: MfmError | None = None
        self._waiters: set[threading.Event] = set()
        self.abandoned: list[threading.Thread] = []
        """Handler threads left running when the signal stopped their attempts."""

    @property
    def reason(self) -> MfmError | None:
        return self._reason

    def stop(self, reason: MfmError) -> None:
        """Fire once (later calls keep the first reason) and wake every waiting attempt."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            waiters = list(self._waiters)
        for event in waiters:
            event.set()

    def watch(self, event: threading.Event) -> None:
        with self._lock:
            if self._reason is None:
                self._waiters.add(event)
                return
        event.set()

    def unwatch(self, event: threading.Event) -> None:
        with self._lock:
            self._waiters.discard(event)


class HandlerRun:
    """One handler coroutine on a fresh event loop, on the calling thread or a daemon one."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._ready = threading.Lock()
        self.thread: threading.Thread | None = None

    def run_here(self) -> Any:
        """Run to completion on this thread (no timeout)."""
        return run_coroutine(self._coro, self._started)

    def run_limited(
        self, timeout_ms: int | None, stop: StopSignal | None, on_stop: Callable[[], None]
    ) -> Any:
        """Run on a daemon thread until it returns, `timeout_ms` passes or `stop` fires;
        then call `on_stop`, cancel the handler's task and raise `StateTimeout` (or the
        stop's reason). The thread is left to end by itself."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["value"] = run_coroutine(self._coro, self._started)
            except BaseException as exc:  # handed to the waiting attempt thread
                box["error"] = exc
            finally:
                done.set()

        self.thread = threading.Thread(target=target, name="mfm-handler", daemon=True)
        self.thread.start()
        if stop is not None:
            stop.watch(done)
        try:
            done.wait(None if timeout_ms is None else timeout_ms / 1000.0)
        finally:
            if stop is not None:
                stop.unwatch(done)
        if "error" in box:
            raise box["error"]
        if "value" in box:
            return box["value"]
        on_stop()
        self._cancel()
        reason = stop.reason if stop is not None else None
        if reason is not None:
            assert stop is not None
            stop.abandoned.append(self.thread)
            raise reason
        assert timeout_ms is not None
        raise StateTimeout(timeout_ms)

    @property
    def abandoned(self) -> bool:
        """True while a timed-out handler's thread is still running."""
        return self.thread is not None and self.thread.is_alive()

    def _started(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        with self._ready:
            self._loop, self._task = loop, task

    def _cancel(self) -> None:
        with self._ready:
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            # RuntimeError: the loop closed meanwhile, i.e. the handler has ended.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)


def run_coroutine(
    coro: Coroutine[Any, Any, Any],
    started: Callable[[asyncio.AbstractEventLoop, asyncio.Task[Any]], None] | None = None,
) -> Any:
    """Run a handler coroutine on a fresh event loop owned by the calling thread.

    A loop per attempt keeps attempts isolated; like `asyncio.run`, tasks the handler
    left behind are cancelled and drained before the loop closes, so nothing leaks.
    """
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(coro)
        if started is not None:
            started(loop, task)
        return loop.run_until_complete(task)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
