"""Bounded retries with doubling backoff: the one retry loop of the store backends.

Each backend decides which of its faults are worth another try (`retry_on`) and what a
fault means once the tries are spent; the loop itself — how many tries, how long between
them — is the same for all of them, so it lives here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BoundedRetries:
    """Up to `retries` more tries after the first, sleeping `backoff_s`, then twice as long
    each time (at most `max_backoff_s`)."""

    retries: int
    backoff_s: float
    max_backoff_s: float

    def call(
        self,
        fn: Callable[[], T],
        retry_on: Callable[[Exception], bool],
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """`fn()`, tried again while it raises an exception `retry_on` accepts. Any other
        exception, and the last one once the tries are spent, propagates unchanged: the
        caller maps it. `fn` must be idempotent."""
        delay = self.backoff_s
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if attempt >= self.retries or not retry_on(exc):
                    raise
            sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
            attempt += 1
