"""Carried attempts: one broker hop per chain step (docs/distributed.md#carried-attempts).

When an attempt closes its wave, its worker takes the run's next coordination step itself
(inline continuation). If that step dispatches exactly one attempt — the next state of a
chain — the worker may *carry* it: run it at once, in the same task, instead of sending a
chord and waiting for another worker to receive it. The attempt is reserved exactly as a
sent one is, so a worker that dies while carrying it is recovered like any lost message
(its reservation is given up one lease TTL later and the attempt dispatched again).

A worker carries only for a short budget per task, so one long chain cannot hold a worker
while other runs' attempts wait in the queue, and only an attempt that ends (by its own
timeout) before the task's hard time limit would stop the process.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.messages import AttemptTask

CARRY_BUDGET_S = 5.0
"""How long after a task started its worker may still begin carried attempts. The hard time
limit of every attempt task includes this budget (see `Coordinator._time_limit`)."""


def may_carry(elapsed_s: float, hard_limit_s: float | None, nxt: AttemptTask) -> bool:
    """May a task that has run `elapsed_s` (under the hard limit `hard_limit_s` its message
    carried, None: none) start `nxt` itself?"""
    if elapsed_s >= CARRY_BUDGET_S:
        return False
    if hard_limit_s is None:
        return True
    # The carried attempt is stopped by its own timeout within `nxt.time_limit_s`; that
    # must come before the task's hard limit kills the process.
    return nxt.time_limit_s is not None and elapsed_s + nxt.time_limit_s <= hard_limit_s


@dataclass
class Carry:
    """An offer, passed to one inline coordination step, to run its single dispatched
    attempt here. `elapsed_s` and `hard_limit_s` describe the offering task."""

    elapsed_s: float
    hard_limit_s: float | None
    task: AttemptTask | None = None

    def take(self, tasks: list[AttemptTask]) -> bool:
        """Keep the step's attempts instead of sending them, if allowed (exactly one)."""
        if self.task is not None or len(tasks) != 1:
            return False
        if not may_carry(self.elapsed_s, self.hard_limit_s, tasks[0]):
            return False
        self.task = tasks[0]
        return True
