"""Waiting on worker threads from the main thread without going deaf to Ctrl-C.

A process-directed SIGINT may be delivered to any thread. CPython runs the Python handler on
the main thread only, and a main thread blocked in an untimed wait (`Thread.join`,
`Future.result()`, `ThreadPoolExecutor.shutdown(wait=True)`) is not woken when the signal
lands on another thread: the handler then runs only when the wait ends. For `mfm run` that
meant a second Ctrl-C ("stop now") was heard only after the handlers in flight returned.
Waiting in short slices lets the handler run within one slice, wherever the signal landed.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

SLICE_S = 0.1


def wait_all(futures: Collection[Future[Any]], timeout_s: float | None = None) -> bool:
    """Wait for every future, in slices; True when all are done before `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = [f for f in futures if not f.done()]
    while pending:
        left = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
        if left <= 0:
            return False
        _, not_done = wait(pending, timeout=left, return_when=ALL_COMPLETED)
        pending = list(not_done)
    return True


def shutdown(
    pool: ThreadPoolExecutor, futures: Collection[Future[Any]], *, cancel_futures: bool = False
) -> None:
    """`pool.shutdown(wait=True)` that still hears signals while `futures` run.

    `futures` must hold every future submitted to `pool` that may still be running; once
    they are done the workers are idle and the final join returns at once."""
    pool.shutdown(wait=False, cancel_futures=cancel_futures)
    wait_all(futures)  # a cancelled future is done: not waited for
    pool.shutdown(wait=True)
