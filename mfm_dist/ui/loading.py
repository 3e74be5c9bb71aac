"""Loading a run for the dashboard: its checked history, and its plan — re-derived from the
run's manifest once, then kept by manifest id (every run of one manifest has one plan, and
re-deriving a 10,000-state plan costs about as much as reading its history).

It checks what `load_run` checks (docs/execution.md#resume) — the history's envelopes and
guards, the manifest against its id, the re-derived plan's op, every state of the history
in the plan — except reading the initial snapshot, which no page shows (`verify` reads
every snapshot).

The plan is derived after the history is read, not beside it on another thread: both are
CPU-bound Python, and a thread deriving the plan slows the read more than it saves (with
SQLite, the row fetch — which gives up the interpreter lock for every row — took 20 times
longer next to it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import check_states_in_plan, derive_plan
from mfm_dist.engine.lru import Lru
from mfm_dist.errors import MfmError, RunError
from mfm_dist.ids import RunId
from mfm_dist.manifest import RunManifest
from mfm_dist.operations import OperationRegistry
from mfm_dist.plan import ExecutionPlan
from mfm_dist.stores.base import EventStore

T = TypeVar("T")
PLAN_CACHE_ENTRIES = 32
PLAN_CACHE_STATES = 400_000
"""Plans kept by manifest id: at most this many, holding at most this many states in all."""


@dataclass(eq=False)
class PlanShape:
    """A re-derived plan and what the pages need of it, by canonical index."""

    manifest: RunManifest
    plan: ExecutionPlan
    order: list[str]
    preds: list[list[int]]
    succs: list[list[int]]
    levels: list[int]
    """Each state's dependency level: the longest path to it from a state without
    predecessors."""
    position: dict[str, int]
    _memo: dict[str, object] = field(default_factory=dict, repr=False)
    _memo_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(cls, manifest: RunManifest, plan: ExecutionPlan) -> PlanShape:
        compiled = plan.compiled
        order = [str(s) for s in compiled.order]
        preds = [sorted(ps) for ps in compiled.preds]
        return cls(
            manifest=manifest,
            plan=plan,
            order=order,
            preds=preds,
            succs=[sorted(ss) for ss in compiled.succs],
            levels=dependency_levels(preds),
            position=dict(compiled.position),
        )

    def memo(self, name: str, make: Callable[[], T]) -> T:
        """Something derived from the plan alone (the drawing's layout, the page's rows),
        made once per plan."""
        with self._memo_lock:
            if name not in self._memo:
                self._memo[name] = make()
            return cast(T, self._memo[name])


def dependency_levels(preds: list[list[int]]) -> list[int]:
    """Longest-path levels of states in canonical order (which is topological)."""
    levels = [0] * len(preds)
    for i, ps in enumerate(preds):
        if ps:
            levels[i] = 1 + max(levels[p] for p in ps)
    return levels


@dataclass
class LoadedView:
    """A run's history with its plan's shape, or the reason the plan is unavailable."""

    history: RunHistory
    shape: PlanShape | None
    problem: str | None
    timings: dict[str, float]
    """Seconds spent in each step, in order."""
    plan_s: float | None
    """Seconds spent deriving the plan, or None when it came from the cache."""


class PlanCache:
    """Plans by manifest id (an LRU bounded by count and total states)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deriving = threading.Lock()
        self._plans: Lru[PlanShape] = Lru(PLAN_CACHE_ENTRIES, PLAN_CACHE_STATES)

    def _cached(self, manifest_id: str) -> PlanShape | None:
        with self._lock:
            return self._plans.get(manifest_id)

    def shape(
        self, artifacts: ArtifactStore, registry: OperationRegistry, manifest_id: str
    ) -> tuple[PlanShape, float | None]:
        """The plan of `manifest_id`, and the seconds its derivation took (None when it was
        cached). One derivation at a time: a second request for the same plan waits for the
        first instead of deriving it again."""
        hit = self._cached(manifest_id)
        if hit is not None:
            return hit, None
        with self._deriving:
            hit = self._cached(manifest_id)
            if hit is not None:
                return hit, None
            started = time.perf_counter()
            shape = PlanShape.of(*derive_plan(artifacts, registry, manifest_id))
            with self._lock:
                self._plans.put(manifest_id, shape, max(1, len(shape.order)))
            return shape, time.perf_counter() - started


def load_view(
    events: EventStore,
    artifacts: ArtifactStore,
    registry: OperationRegistry,
    plans: PlanCache,
    rid: RunId,
) -> LoadedView:
    """Read and check the run's history, then get its plan from `plans`. A plan that cannot
    be had (unknown op, changed code, a missing manifest) leaves the view without one and
    says why (`problem`); a run that does not exist raises `run_not_found`."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    envelopes = events.read_range(rid, 1, None)
    lap("events: read and decode")
    history = RunHistory.from_envelopes(rid, envelopes)
    del envelopes
    lap("history: check")
    shape: PlanShape | None = None
    problem: str | None = None
    plan_s: float | None = None
    try:
        shape, plan_s = plans.shape(artifacts, registry, str(history.started.manifest_id))
        if str(shape.plan.op_id) != str(history.started.op_id):
            raise RunError("plan_op_id_mismatch", "the re-derived plan is for another op")
        check_states_in_plan(history.states, shape.position)
    except MfmError as exc:
        shape, problem = None, exc.code
    lap("plan: derive (or cached) and check")
    return LoadedView(history, shape, problem, timings, plan_s)
