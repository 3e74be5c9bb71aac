"""The wake-up timers that keep every unfinished run moving (docs: distributed liveness).

Each running run has one entry in the Redis sorted set `mfm:timers`: when its coordinator
must look at it next. The coordinator sets it after every look (a watchdog period ahead,
or sooner); the submitter sets it *before* `RunStarted`, so no run exists without one.
Every control worker runs a `TimerPoller` thread that takes the due entries (atomically
re-arming each one watchdog period later) and sends one `advance` per run. So the timers
live in Redis (AOF) and survive a broker restart, a lost message or a dead control worker:
the next poll of any control worker re-sends what was lost, one period later at most.

`arm_unscheduled` gives a timer to RUNNING runs that have none (runs of older versions, or
a Redis that lost its last writes): it pages through the run index once when a control
worker starts and again whenever the poller sees that Redis restarted — never periodically.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mfm_dist.stores.redis_events import running_run_ids
from mfm_dist.stores.redis_keys import TIMERS_KEY
from workers.leases import Coordination

log = logging.getLogger("mfm.timers")

PAGE = 500
RESTART_CHECK_S = 5.0
ERROR_LOG_EVERY_S = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def running_runs(client: Any, page: int = PAGE) -> Iterator[str]:
    """Ids of every RUNNING run in the index, in pages (each run at least once)."""
    return running_run_ids(client, page)


def arm_unscheduled(client: Any, due_ms: int | None = None) -> int:
    """Give every RUNNING run without a timer one, due now; returns how many."""
    due = _now_ms() if due_ms is None else due_ms
    armed = 0
    batch: list[str] = []

    def flush() -> int:
        if not batch:
            return 0
        added = int(client.zadd(TIMERS_KEY, dict.fromkeys(batch, due), nx=True))
        batch.clear()
        return added

    for rid in running_runs(client):
        batch.append(rid)
        if len(batch) >= PAGE:
            armed += flush()
    armed += flush()
    if armed:
        log.info("armed the timers of %d running run(s) that had none", armed)
    return armed


class TimerPoller:
    """A daemon thread that sends `advance` for every due timer (one per control worker).

    It survives anything Redis or the broker do: every failure is logged (rate-limited)
    and the loop goes on. `send(run_id)` must enqueue one `advance(run_id)`."""

    def __init__(
        self,
        coord: Coordination,
        send: Callable[[str], None],
        *,
        poll_s: float,
        rearm_ms: int,
        batch: int = 500,
        extra_polls: Sequence[Callable[[], int]] = (),
        on_restart: Sequence[Callable[[], object]] = (),
    ) -> None:
        """`extra_polls`: more timer sets polled each period (backfills: each call sends
        what is due and returns how many); `on_restart`: called with `arm_unscheduled`."""
        self._extra_polls = tuple(extra_polls)
        self._on_restart = tuple(on_restart)
        self._coord = coord
        self._send = send
        self._poll_s = poll_s
        self._rearm_ms = rearm_ms
        self._batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis_run_id: str | None = None
        self._checked_at = float("-inf")
        self._error_logged_at = float("-inf")

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="mfm-timers", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def poll_once(self) -> int:
        """Send the due wake-ups once; returns how many were sent."""
        self._check_restart()
        due = self._coord.pop_due(_now_ms(), self._rearm_ms, self._batch)
        for rid in due:
            self._send(rid)
        return len(due) + sum(poll() for poll in self._extra_polls)

    def _check_restart(self) -> None:
        """A Redis that restarted may have lost its newest writes (AOF `everysec`): arm
        every running run that lost its timer."""
        now = time.monotonic()
        if now - self._checked_at < RESTART_CHECK_S:
            return
        self._checked_at = now
        run_id = str(self._coord.client.info("server").get("run_id", ""))
        if run_id != self._redis_run_id:
            if self._redis_run_id is not None:
                log.warning("redis restarted; checking every running run has a timer")
            arm_unscheduled(self._coord.client)
            for hook in self._on_restart:
                hook()
            self._redis_run_id = run_id

    def _loop(self) -> None:
        while not self._stop.is_set():
            sent = 0
            try:
                sent = self.poll_once()
            except Exception as exc:  # Redis or broker down: try again next period
                now = time.monotonic()
                if now - self._error_logged_at >= ERROR_LOG_EVERY_S:
                    self._error_logged_at = now
                    log.warning("timer poll failed (%s); retrying", type(exc).__name__)
                self._checked_at = float("-inf")  # re-check for a restart once it is back
            if sent < self._batch:
                self._stop.wait(self._poll_s)
