"""A run's progress: what is done, what each next attempt starts from, and the final merge.

Both engines keep one `RunProgress` per run: the embedded engine updates it as
attempts finish, the distributed coordinator rebuilds it from the event log.
Sequential runs thread the context through states in canonical order; fan-out
runs give each state the merge of its ancestors' deltas (docs/merge.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig, backoff_delay
from mfm_dist.engine.history import RunHistory, StateRecord
from mfm_dist.engine.merge import (
    Delta,
    MergeConflict,
    MergeTracker,
    PackedDelta,
    apply_deltas,
    compute_delta,
)
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import ErrorCategory, ErrorInfo
from mfm_dist.events import EventEnvelope
from mfm_dist.ids import StateId
from mfm_dist.plan import CompiledPlan

ORPHAN_CODE = "orphan_attempt_recovered"
MAX_ORPHAN_RECOVERIES = 3
"""Consecutive orphan recoveries of one state before the run gives up on it: a fault that
kills every attempt (a poisoned input, an OOM-killed handler) must end the run, not loop."""


def orphan_error(why: str) -> ErrorInfo:
    """The error an orphaned attempt is closed with (docs/execution.md): retryable, and
    counted against `MAX_ORPHAN_RECOVERIES`, not the state's retries. `why` says how the
    engine knew its attempt was gone (the run resumed; the worker's lease expired)."""
    return ErrorInfo(
        code=ORPHAN_CODE,
        category=ErrorCategory.UNKNOWN,
        retryable=True,
        message=f"attempt was open {why}; closed and retried",
    )


class RunProgress:
    def __init__(
        self,
        plan: CompiledPlan,
        run_config: RunConfig,
        snapshots: SnapshotStore,
        initial_snapshot_id: str,
    ) -> None:
        self.plan = plan
        self.run_config = run_config
        self.snapshots = snapshots
        self.initial_snapshot_id = initial_snapshot_id
        self.fan_out = run_config.is_fan_out
        self.tracker = MergeTracker(plan, detect_conflicts=self.fan_out)
        self.next_attempt = [0] * len(plan)
        self.last_base: dict[int, str] = {}
        self.last_error: dict[int, ErrorInfo] = {}
        self.retry_at_ms: dict[int, int] = {}
        """Wall-clock time before which a failed state's retry must not start (backoff)."""
        self.orphan_streak: dict[int, int] = {}
        """Consecutive orphan recoveries per state (reset by any other outcome)."""
        self.handler_attempts: dict[int, int] = {}
        """Attempts per state that ended by the handler's own failure (orphans excluded):
        what `max_attempts` counts, so a crashed worker never costs the handler a retry."""
        self._waiting = [len(p) for p in plan.preds]  # predecessors not yet completed
        self.frontier: set[int] = {i for i, preds in enumerate(plan.preds) if not preds}
        """States not completed whose predecessors all completed (kept as states complete,
        so what may run is found without scanning the whole plan)."""
        self._frontier_heap = sorted(self.frontier)  # min-heap over `frontier`, lazily pruned
        self._known: dict[int, tuple[str, str, PackedDelta]] = {}

    # -- facts about the run ------------------------------------------------------------------
    @property
    def completed(self) -> dict[int, str]:
        return self.tracker.snapshot_ids

    @property
    def conflict(self) -> MergeConflict | None:
        """The earliest merge conflict among completed states (fan-out only)."""
        if not self.fan_out or not self.tracker.pairs:
            return None
        return self.tracker.first_conflict()

    def is_done(self) -> bool:
        return len(self.completed) == len(self.plan)

    def index(self, state_id: str) -> int:
        return self.plan.position[state_id]

    def preds_done(self, i: int) -> bool:
        return self._waiting[i] == 0

    def first_pending(self) -> int | None:
        """The first state in canonical order that has not completed (sequential runs).

        Every state before it completed, so its predecessors did: it is the frontier's
        smallest member."""
        heap = self._frontier_heap
        while heap and heap[0] not in self.frontier:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def runnable(self, i: int) -> bool:
        """May state `i` start (now or after its backoff)?

        Fan-out runs are deterministic under failure: a state runs iff its predecessors
        completed, it has not failed for good, and no two of its ancestors conflict —
        so the completed set of a failing run does not depend on scheduling either.
        """
        if i in self.completed or not self.preds_done(i) or self.failed_for_good(i):
            return False
        return not (self.fan_out and self.tracker.blocks(i))

    def failed_for_good(self, i: int) -> bool:
        return i in self.last_error and i not in self.completed and not self.retry_allowed(i)

    def failure(self) -> tuple[int | None, ErrorInfo | None]:
        """Why the run fails, chosen deterministically: the failed state first in canonical
        order, else the earliest merge conflict; (None, None) if nothing failed."""
        failed = sorted(i for i in self.last_error if self.failed_for_good(i))
        if failed:
            return failed[0], self.last_error[failed[0]]
        conflict = self.tracker.first_conflict() if self.fan_out else None
        if conflict is not None:
            return None, conflict.error()
        return None, None

    def succeeded(self) -> bool:
        return self.is_done() and self.failure() == (None, None)

    # -- recording ----------------------------------------------------------------------------
    def expect(self, known: dict[int, tuple[str, str, PackedDelta]]) -> None:
        """Deltas computed earlier (the cluster's delta journal), by state: while catching
        up with a history, a completed state whose snapshot and base are the ones given
        takes its delta from here instead of loading and diffing two snapshots. Anything
        else is computed as usual, so a wrong or stale hint costs reads, not correctness."""
        self._known = known

    def knows(self, i: int, snapshot_id: str) -> bool:
        """Whether catching up with state `i` completed as `snapshot_id` needs no read."""
        hint = self._known.get(i)
        return hint is not None and hint[0] == snapshot_id

    def forget_expected(self) -> None:
        self._known = {}

    def record_completed(
        self, i: int, snapshot_id: str, delta: Delta | PackedDelta
    ) -> MergeConflict | None:
        if i not in self.tracker.deltas:
            self.frontier.discard(i)
            for j in self.plan.succs[i]:
                self._waiting[j] -= 1
                if self._waiting[j] == 0 and j not in self.tracker.deltas:
                    self.frontier.add(j)
                    heapq.heappush(self._frontier_heap, j)
        conflict = self.tracker.record(i, snapshot_id, delta)
        return conflict if self.fan_out else None

    def record_attempt(self, i: int, attempt: int, base_snapshot_id: str) -> None:
        self.next_attempt[i] = attempt + 1
        self.last_base[i] = base_snapshot_id

    def record_failed(self, i: int, error: ErrorInfo, closed_ms: int | None = None) -> None:
        self.last_error[i] = error
        if error.code == ORPHAN_CODE:
            self.orphan_streak[i] = self.orphan_streak.get(i, 0) + 1
        else:
            self.orphan_streak.pop(i, None)
            self.handler_attempts[i] = self.handler_attempts.get(i, 0) + 1
        if closed_ms is not None and self.next_attempt[i] > 0:
            delay = backoff_delay(self.run_config.retry_policy.backoff, self.next_attempt[i] - 1)
            self.retry_at_ms[i] = closed_ms + delay.total_millis

    def retry_allowed(self, i: int) -> bool:
        """A failed state runs again iff its error is retryable and the policy has attempts
        left — or the failure was an orphan recovery, which is not the handler's fault."""
        error = self.last_error.get(i)
        if error is None:
            return True
        if error.code == ORPHAN_CODE:
            return self.orphan_streak.get(i, 1) <= MAX_ORPHAN_RECOVERIES
        # `attempt + 1 < max_attempts`, counting only the handler's own attempts.
        return error.retryable and self.run_config.retry_policy.allows_retry(
            self.handler_attempts.get(i, 1) - 1
        )

    # -- bases and the final snapshot ---------------------------------------------------------
    def base_for(self, i: int) -> tuple[str, dict[str, JsonValue]]:
        """The base snapshot (id, content) for the next attempt of state `i`."""
        if i in self.last_base:  # a retry starts from the same base snapshot
            sid = self.last_base[i]
            return sid, self.snapshots.load(sid)
        if not self.fan_out:
            sid = self._previous_checkpoint(i)
            return sid, self.snapshots.load(sid)
        start, rest = self.tracker.base_plan(i)
        return self._materialize(start, rest)

    def expected_base_id(self, i: int) -> str:
        """The base a first attempt of `i` must have had, computed without writing anything."""
        if not self.fan_out:
            return self._previous_checkpoint(i)
        start, rest = self.tracker.base_plan(i)
        return self._materialize(start, rest, store=False)[0]

    def _previous_checkpoint(self, i: int) -> str:
        """Sequential runs: the snapshot of the last completed state before `i`."""
        if i - 1 in self.completed:  # the common case: states complete in canonical order
            return self.completed[i - 1]
        prev = max((p for p in self.completed if p < i), default=None)
        return self.initial_snapshot_id if prev is None else self.completed[prev]

    def final_snapshot(self, *, store: bool = True) -> str:
        """The last successful checkpoint: the merge of every completed state. Stored in
        full when `store` (a run's final snapshot is never only a link,
        docs/storage.md#snapshot-links)."""
        if not self.completed:
            sid = self.initial_snapshot_id
        elif not self.fan_out:
            sid = self.completed[max(self.completed)]
        elif self.conflict is not None:  # keep strict canonical order when deltas clash
            sid = self._materialize(None, sorted(self.completed), store=store)[0]
        else:
            start, rest = self.tracker.final_plan()
            sid = self._materialize(start, rest, store=store)[0]
        if store:
            self.snapshots.ensure_full(sid)
        return sid

    def _materialize(
        self, start: int | None, rest: list[int], *, store: bool = True
    ) -> tuple[str, dict[str, JsonValue]]:
        start_id = self.initial_snapshot_id if start is None else self.completed[start]
        base = self.snapshots.load(start_id)
        if not rest:
            return start_id, base
        content = apply_deltas(base, (self.tracker.deltas[j] for j in sorted(rest)))
        # Stored like a state's snapshot: as a link to `start` when the merge is small.
        prepared = self.snapshots.prepare(start_id, base, compute_delta(base, content), content)
        sid = self.snapshots.commit(prepared) if store else prepared.snapshot_id
        return sid, content

    # -- rebuilding from history --------------------------------------------------------------
    @classmethod
    def from_history(
        cls,
        history: RunHistory,
        plan: CompiledPlan,
        run_config: RunConfig,
        snapshots: SnapshotStore,
    ) -> RunProgress:
        progress = cls(plan, run_config, snapshots, str(history.started.initial_snapshot_id))
        progress.sync(history)
        return progress

    def sync(self, history: RunHistory) -> None:
        """Catch up with every state of `history` (completions already recorded are kept,
        not diffed again)."""
        for state_id, record in history.states.items():
            self._sync(self.plan.position[state_id], record)

    def observe(self, history: RunHistory, envelopes: Iterable[EventEnvelope]) -> None:
        """Catch up with envelopes just applied to `history` (incremental `from_history`)."""
        touched = {str(e.state_id) for e in envelopes if e.state_id is not None}
        # In plan order: a chain's snapshots are then rebuilt each from the one before.
        for state_id in sorted(touched, key=self.plan.position.__getitem__):
            record = history.states.get(state_id)
            if record is not None:
                self._sync(self.plan.position[state_id], record)

    def _sync(self, i: int, record: StateRecord) -> None:
        last = record.last
        if last is None:
            return
        self.next_attempt[i] = last.attempt + 1
        if last.outcome == "completed" and last.snapshot_id is not None:
            if i not in self.tracker.deltas:
                hint = self._known.pop(i, None)
                if hint is not None and hint[:2] == (last.snapshot_id, last.base_snapshot_id):
                    self.record_completed(i, last.snapshot_id, hint[2])
                else:
                    base = self.snapshots.load(last.base_snapshot_id)
                    new = self.snapshots.load(last.snapshot_id)
                    self.record_completed(i, last.snapshot_id, compute_delta(base, new))
            self.last_base.pop(i, None)
            self.last_error.pop(i, None)
        else:
            self.last_base[i] = last.base_snapshot_id
            closed = [a for a in record.attempts if a.outcome is not None]
            streak = 0
            for att in reversed(closed):
                if att.error is None or att.error.code != ORPHAN_CODE:
                    break
                streak += 1
            if last.error is not None:
                self.record_failed(i, last.error, last.ts_closed)
            handled = sum(
                1 for a in closed if a.error is not None and a.error.code != ORPHAN_CODE
            )
            if handled:
                self.handler_attempts[i] = handled
            else:
                self.handler_attempts.pop(i, None)
            if streak:
                self.orphan_streak[i] = streak
            else:
                self.orphan_streak.pop(i, None)
            if last.error is None:
                self.last_error.pop(i, None)
                self.retry_at_ms.pop(i, None)

    def state_id(self, i: int) -> StateId:
        return self.plan.order[i]
