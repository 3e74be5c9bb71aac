"""Driving a backfill: one `step()` at a time, by whoever holds it (the CLI's local pool
embedded, the control worker on a cluster). Backend-neutral: runs are started through a
`Starter` and cancelled through a `Canceller`.

A step reads the journal (incrementally), looks up the runs of claimed partitions in the
event store (one bulk lookup), and then, in one guarded append:

* records the runs it found terminal (`settled`, with the error code of failed ones);
* unless paused or cancelling, claims the next pending partitions — as many as
  `max_active` and the rate allow — and only then submits their runs (idempotent by key,
  so a driver that dies between the two leaves claims the next step submits again);
* when cancelling: asks every running run to cancel, and ends the backfill once none runs;
* when every planned partition is terminal: ends the issue (`finished`).

Every append is guarded by the journal head the step read: a driver racing another
driver (or a `pause` from the CLI) loses the append and looks again — it never acts on a
stale view. Runs are never started twice: a partition's run id is a function of its key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.backfill.model import (
    CODEC,
    BackfillError,
    BackfillPlan,
    BackfillRecord,
    Claimed,
    Finished,
    Rejected,
    RejectedEntry,
    Settled,
    SettledEntry,
    backfill_journal,
)
from mfm_dist.backfill.planner import now_ms
from mfm_dist.backfill.state import BackfillState, PartStatus, Phase, fold
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import result_from_history
from mfm_dist.errors import ConcurrencyError, MfmError
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase
from mfm_dist.stores.base import EventStore

log = logging.getLogger("mfm.backfill")

MAX_CLAIMS_PER_STEP = 200
IDLE_WAKE_S = 30.0


class Starter(Protocol):
    """Starts partition runs for a driver."""

    def start(self, plan: BackfillPlan, index: int, generation: int) -> str:
        """Submit the partition's run (idempotent: its id is a function of its key) and
        return the run id; raise the refusal (`MfmError`) when it cannot start."""

    def ensure(self, plan: BackfillPlan, index: int, generation: int, run_id: str) -> None:
        """A claimed partition's run is running: make sure something drives it (the
        cluster always does; embedded, a run whose process died is resumed here)."""


class Canceller(Protocol):
    def cancel(self, run_id: str, reason: str | None) -> None:
        """Request cancellation of a running run (idempotent)."""


@dataclass
class StepOutcome:
    status: str
    """`finished`, `running`, `paused`, `cancelling`, `stale` (lost a race; look again)."""
    wake_s: float | None
    """When to step again (None: nothing will change without an outside event)."""
    state: BackfillState
    claimed: int = 0
    settled: int = 0
    rejected: int = 0


class BackfillDriver:
    def __init__(
        self,
        events: EventStore,
        artifacts: ArtifactStore,
        name: str,
        starter: Starter,
        canceller: Canceller | None,
        *,
        poll_s: float = 0.5,
        max_claims_per_step: int = MAX_CLAIMS_PER_STEP,
        may_claim: Callable[[], bool] = lambda: True,
    ) -> None:
        self.events = events
        self.artifacts = artifacts
        self.name = name
        self.journal = backfill_journal(name)
        self.starter = starter
        self.canceller = canceller
        self.poll_s = poll_s
        self.max_claims_per_step = max_claims_per_step
        self.may_claim = may_claim
        self._state: BackfillState | None = None
        self._plans: dict[str, BackfillPlan] = {}
        self._codes: dict[str, str | None] = {}

    # -- reading ----------------------------------------------------------------------------
    def refresh(self) -> BackfillState:
        """The backfill's state, reading only what was appended since the last look."""
        if self._state is None:
            self._state = fold(self.name, self.events.journal_read(self.journal))
        else:
            fresh = self.events.journal_read(self.journal, self._state.head + 1)
            self._state = fold(self.name, fresh, self._state)
        if not self._state.exists:
            raise BackfillError("backfill_not_found", f"no backfill named {self.name!r}")
        return self._state

    def plan(self, plan_id: str) -> BackfillPlan:
        plan = self._plans.get(plan_id)
        if plan is None:
            plan = BackfillPlan.load(self.artifacts, plan_id)
            self._plans = {plan_id: plan}
        return plan

    def _error_code(self, run_id: str) -> str | None:
        if run_id not in self._codes:
            try:
                result = result_from_history(RunHistory.load(self.events, RunId(run_id)))
                self._codes[run_id] = result.error.code if result.error is not None else None
            except MfmError as exc:
                log.warning("backfill %s: cannot read run %s (%s)", self.name, run_id, exc.code)
                return None
        return self._codes[run_id]

    def _append(self, state: BackfillState, records: list[BackfillRecord]) -> bool:
        """Append guarded by `state.head`; False when another writer got there first."""
        if not records:
            return True
        ts = now_ms()
        try:
            entries = self.events.journal_append(
                self.journal, state.head, [CODEC.draft(r, ts) for r in records]
            )
        except ConcurrencyError as exc:
            if exc.code != "expected_seq_mismatch":
                raise
            return False
        self._state = fold(self.name, entries, state)
        return True

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> StepOutcome:
        state = self.refresh()
        if state.finished is not None:
            return StepOutcome("finished", None, state)
        issue = state.issue
        assert issue is not None
        plan = self.plan(issue.plan_id)
        claimed = state.indices(PartStatus.CLAIMED)
        ids = {i: plan.run_id(i, state.parts[i].generation) for i in claimed}
        found = self.events.run_summaries([RunId(r) for r in ids.values()])
        settled: list[SettledEntry] = []
        running: list[int] = []
        missing: list[int] = []
        for i in claimed:
            summary = found.get(ids[i])
            if summary is None:
                missing.append(i)
            elif summary.phase is RunPhase.RUNNING:
                running.append(i)
            else:
                code = self._error_code(ids[i]) if summary.phase is RunPhase.FAILED else None
                settled.append(SettledEntry(index=i, phase=summary.phase.value, code=code))
        records: list[BackfillRecord] = []
        if settled:
            records.append(Settled(issue=issue.issue, entries=settled))

        if state.cancel is not None:
            return self._cancel_step(state, plan, records, running, ids, len(settled))

        for i in running:
            self.starter.ensure(plan, i, state.parts[i].generation, ids[i])
        new: list[int] = []
        wake: float | None = self.poll_s if (running or missing) else None
        if not state.paused and self.may_claim():
            pending = state.indices(PartStatus.PENDING)
            free = issue.max_active - len(running) - len(missing)
            allowance, rate_wake = self._allowance(state)
            n = max(0, min(free, allowance, self.max_claims_per_step, len(pending)))
            new = pending[:n]
            if new:
                entries = [(i, state.parts[i].generation) for i in new]
                records.append(Claimed(issue=issue.issue, entries=entries))
                wake = self.poll_s  # their runs are in flight now
            if len(pending) > n:
                if n == self.max_claims_per_step and free > n and allowance > n:
                    wake = 0.0  # more to claim right away
                elif allowance <= n and rate_wake is not None:
                    wake = min(wake, rate_wake) if wake is not None else rate_wake
        if not self._append(state, records):
            return StepOutcome("stale", 0.0, self.refresh())
        state = self._state or state
        rejected = self._start(state, plan, [*missing, *new])
        state = self._state or state
        if not state.paused and state.all_terminal() and state.cancel is None:
            counts = state.counts()
            if not self._append(
                state, [Finished(issue=issue.issue, outcome="completed", counts=counts)]
            ):
                return StepOutcome("stale", 0.0, self.refresh())
            state = self._state or state
            return StepOutcome("finished", None, state, len(new), len(settled), rejected)
        if state.paused and not state.indices(PartStatus.CLAIMED):
            wake = None
        if rejected or (missing and wake is None):
            wake = 0.0 if rejected else self.poll_s
        return StepOutcome(state.phase.value, wake, state, len(new), len(settled), rejected)

    def _start(self, state: BackfillState, plan: BackfillPlan, indices: list[int]) -> int:
        """Submit the runs of claimed partitions; refusals that cannot heal are recorded
        (`rejected`), the others are left claimed for the next step."""
        assert state.issue is not None
        refused: list[RejectedEntry] = []
        for i in indices:
            try:
                self.starter.start(plan, i, state.parts[i].generation)
            except MfmError as exc:
                if exc.info.retryable:
                    log.warning("backfill %s: partition %d: %s; retried", self.name, i, exc.code)
                    continue
                refused.append(
                    RejectedEntry(index=i, code=exc.info.code, message=exc.info.redacted().message)
                )
        if refused and not self._append(
            state, [Rejected(issue=state.issue.issue, entries=refused)]
        ):
            return 0  # the next step submits them again and records the refusal then
        return len(refused)

    def _allowance(self, state: BackfillState) -> tuple[int, float | None]:
        """New runs the rate allows now, and when the window frees up (None: no limit)."""
        assert state.issue is not None
        rate = state.issue.rate
        if rate is None:
            return 1 << 30, None
        now = now_ms()
        window = [(ts, n) for ts, n in state.claims if ts > now - rate.period_ms and n > 0]
        used = sum(n for _, n in window)
        allowance = max(0, rate.count - used)
        if not window:
            return allowance, None
        return allowance, max(0.0, (window[0][0] + rate.period_ms - now) / 1000.0)

    def _cancel_step(
        self,
        state: BackfillState,
        plan: BackfillPlan,
        records: list[BackfillRecord],
        running: list[int],
        ids: dict[int, str],
        n_settled: int,
    ) -> StepOutcome:
        assert state.issue is not None and state.cancel is not None
        for i in running:
            if self.canceller is not None:
                try:
                    self.canceller.cancel(ids[i], state.cancel.reason)
                except MfmError as exc:
                    log.info("backfill %s: cancel of %s: %s", self.name, ids[i], exc.code)
            # Something must drive the run to its end (embedded: an interrupted run is
            # resumed, which only records the cancellation).
            self.starter.ensure(plan, i, state.parts[i].generation, ids[i])
        if not self._append(state, records):
            return StepOutcome("stale", 0.0, self.refresh())
        state = self._state or state
        if not running:
            # Nothing runs any more: what never got a run (pending, or claimed by a driver
            # that died before submitting) is `not_started`.
            counts = state.counts()
            counts[PartStatus.NOT_STARTED.value] += (
                counts[PartStatus.PENDING.value] + counts[PartStatus.CLAIMED.value]
            )
            counts[PartStatus.PENDING.value] = counts[PartStatus.CLAIMED.value] = 0
            issue = state.issue
            assert issue is not None
            done = Finished(issue=issue.issue, outcome="cancelled", counts=counts)
            if not self._append(state, [done]):
                return StepOutcome("stale", 0.0, self.refresh())
            state = self._state or state
        status = "finished" if state.phase is Phase.CANCELLED else "cancelling"
        return StepOutcome(
            status, None if status == "finished" else self.poll_s, state, 0, n_settled
        )


def run_until_idle(
    driver: BackfillDriver,
    *,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[StepOutcome], bool] = lambda outcome: outcome.status == "finished",
    max_wait_s: float = 1.0,
) -> StepOutcome:
    """Step until `stop(outcome)` (by default: the backfill finished)."""
    while True:
        outcome = driver.step()
        if stop(outcome):
            return outcome
        sleep(min(outcome.wake_s if outcome.wake_s is not None else max_wait_s, max_wait_s))
