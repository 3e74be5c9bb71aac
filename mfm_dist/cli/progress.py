"""Live progress of a run on a terminal, fed by the engine's event listener.

The listener runs on the engine's worker threads for every appended envelope,
so it only updates counters under a lock; rich redraws from its own refresh
thread, reading those counters through a renderable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import TracebackType

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mfm_dist.events import EventEnvelope, StateCompleted, StateEntered, StateFailed


@dataclass
class ProgressCounts:
    """What the display shows; a consistent copy is taken under the tracker's lock."""

    total: int
    done: int = 0
    running: int = 0
    failed_attempts: int = 0
    retrying: int = 0
    events: int = 0


@dataclass
class ProgressTracker:
    """Thread-safe counters of a run's states, updated from appended envelopes."""

    total: int
    done: int = 0
    _open: set[str] = field(default_factory=set)
    _awaiting_retry: set[str] = field(default_factory=set)
    _failed_attempts: int = 0
    _events: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, env: EventEnvelope) -> None:
        ev = env.event
        with self._lock:
            self._events += 1
            if isinstance(ev, StateEntered):
                sid = str(ev.state_id)
                self._open.add(sid)
                self._awaiting_retry.discard(sid)
            elif isinstance(ev, StateCompleted):
                self._open.discard(str(ev.state_id))
                self.done += 1
            elif isinstance(ev, StateFailed):
                sid = str(ev.state_id)
                self._open.discard(sid)
                self._awaiting_retry.add(sid)
                self._failed_attempts += 1

    def counts(self) -> ProgressCounts:
        with self._lock:
            return ProgressCounts(
                total=self.total,
                done=self.done,
                running=len(self._open),
                failed_attempts=self._failed_attempts,
                retrying=len(self._awaiting_retry),
                events=self._events,
            )


class _View:
    """A renderable that reads the tracker each time rich refreshes."""

    def __init__(self, label: str, tracker: ProgressTracker) -> None:
        self.label = label
        self.tracker = tracker

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        c = self.tracker.counts()
        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True, overflow="ellipsis")
        head.add_column(no_wrap=True)
        head.add_row(
            Text(self.label, style="bold"),
            ProgressBar(total=max(c.total, 1), completed=c.done, width=24),
        )
        yield head
        line = Text()
        line.append(f"{c.done}/{c.total} states")
        line.append(" | ")
        line.append(f"running {c.running}", style="cyan")
        line.append(" | ")
        failed_style = "red" if c.failed_attempts else ""
        line.append(f"failed attempts {c.failed_attempts}", style=failed_style)
        line.append(" | ")
        line.append(f"awaiting retry {c.retrying}", style="yellow" if c.retrying else "")
        yield line


class LiveProgress:
    """Context manager showing a tracker live on `console` (stderr)."""

    def __init__(self, console: Console, label: str, tracker: ProgressTracker) -> None:
        self._live = Live(
            _View(label, tracker), console=console, refresh_per_second=8, transient=False
        )

    def __enter__(self) -> LiveProgress:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.refresh()
        self._live.stop()
