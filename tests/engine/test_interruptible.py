"""Waiting on threads in slices: a signal landing on a worker thread is still handled by the
main thread while the wait goes on (mfm_dist.engine.interruptible)."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import pytest

from mfm_dist.engine import interruptible


class Pressed(Exception):
    pass


def test_wait_all_says_whether_everything_finished_in_time() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        quick = pool.submit(lambda: None)
        held = pool.submit(release.wait)
        assert interruptible.wait_all([quick], timeout_s=5)
        assert not interruptible.wait_all([quick, held], timeout_s=0.05)
        release.set()
        assert interruptible.wait_all([quick, held])


def test_a_signal_on_a_worker_thread_interrupts_the_shutdown_wait() -> None:
    release = threading.Event()
    started = threading.Event()

    def work() -> None:
        started.set()
        release.wait(30)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        raise Pressed

    previous = signal.signal(signal.SIGINT, on_sigint)
    pool = ThreadPoolExecutor(1, thread_name_prefix="probe")
    try:
        future = pool.submit(work)
        started.wait(30)
        worker = next(t for t in threading.enumerate() if t.name.startswith("probe"))
        threading.Timer(0.2, signal.pthread_kill, (worker.ident, signal.SIGINT)).start()
        with pytest.raises(Pressed):
            interruptible.shutdown(pool, [future])
        assert not future.done()  # heard while the work was still going
    finally:
        signal.signal(signal.SIGINT, previous)
        release.set()
        pool.shutdown(wait=True)
