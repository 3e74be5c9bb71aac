"""What the dashboard shows, read from the same stores as the CLI with the library's read
functions (`list_runs`, `RunHistory`, `run_report`, `verify_run`, `replay_run`, id-prefix
lookups). Every shape the CLI prints with `--json` is produced here the same way, so the
JSON API (`/api/...`) and the CLI agree; the rest (live progress, a state's delta, the
attempt timeline) are the dashboard's own views of the same records.

A run being watched is kept decoded in memory (a small LRU) and refreshed incrementally
(`RunHistory.refresh` reads only what was appended since), so polling a 10,000-state run
costs a read of its new events, not of its whole history.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from mfm_dist.canonical import JsonValue
from mfm_dist.cli.app import App
from mfm_dist.cli.drivers import DriverStatus, Liveness, driver_status
from mfm_dist.cli.inspection import run_query
from mfm_dist.config import RunConfig, backoff_delay
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lru import Lru
from mfm_dist.engine.merge import compute_delta
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import InvalidInput, MfmError, NotFound
from mfm_dist.events import FACT_RECORDED, DomainEvent
from mfm_dist.ids import RunId
from mfm_dist.plan import ExecutionPlan
from mfm_dist.reports import LeaseView, RunReport, StateStatus, run_report
from mfm_dist.results import RunPhase, RunSummary
from mfm_dist.ui.loading import PlanCache, PlanShape, load_view

STATUS_LETTERS = {
    StateStatus.PENDING: "P",
    StateStatus.RUNNING: "R",
    StateStatus.RETRYING: "T",
    StateStatus.COMPLETED: "C",
    StateStatus.SKIPPED: "S",
    StateStatus.FAILED: "F",
}
"""One letter per state status: the live view sends a run's statuses as one string."""
SHORT_ID = 8
"""Run ids are shown by their first characters (the minimum prefix the CLI accepts)."""
MAX_PAGE = 500
LEVELED_MAX = 60
"""Plans with at most this many dependency levels are drawn one row per level; deeper ones
(long chains) as one grid in canonical order."""
REPORT_TTL_S = 1.0
"""A running run's report is recomputed at most this often while its log is unchanged
(leases and backoffs move without new events)."""
VALUE_PREVIEW = 2000
"""Characters of a long string value shown in a state's delta or a fact."""
SHOWN_FACTS = 50


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a run's history, plan and report are built: each
    full collection walks every object built so far, which more than doubles the time to
    decode a 10,000-state run. Threads may overlap: collection resumes when the last one
    is done (if it was on before the first)."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


# -- runs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunsPage:
    rows: list[dict[str, Any]]
    """`mfm runs --json` rows."""
    next_cursor: str | None
    summaries: list[RunSummary]
    drivers: dict[str, DriverStatus]


@dataclass(frozen=True)
class RunFilters:
    """The `mfm runs` filters, as given (strings; checked by `run_query`)."""

    op: str | None = None
    phase: str | None = None
    labels: tuple[str, ...] = ()
    backfill: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 20
    cursor: str | None = None

    @classmethod
    def from_params(
        cls, get: Callable[[str], str | None], get_list: Callable[[str], list[str]]
    ) -> RunFilters:
        def text(name: str) -> str | None:
            value = (get(name) or "").strip()
            return value or None

        raw_limit = text("limit")
        try:
            limit = int(raw_limit) if raw_limit is not None else 20
        except ValueError:
            raise InvalidInput("usage", "limit must be a number") from None
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("usage", f"limit must be within 1..{MAX_PAGE}")
        phase = text("phase")
        if phase is not None:
            matches = [p.value for p in RunPhase if p.value.lower() == phase.lower()]
            if not matches:
                raise InvalidInput("usage", "phase must be Running, Completed, Failed or Cancelled")
            phase = matches[0]
        labels = tuple(v.strip() for v in get_list("label") if v.strip())
        return cls(
            op=text("op"),
            phase=phase,
            labels=labels,
            backfill=text("backfill"),
            since=text("since"),
            until=text("until"),
            limit=limit,
            cursor=text("cursor"),
        )

    def params(self, *, cursor: str | None = None) -> list[tuple[str, str]]:
        """These filters as query parameters (for links), with another cursor."""
        out: list[tuple[str, str]] = []
        for name in ("op", "phase", "backfill", "since", "until"):
            value = getattr(self, name)
            if value is not None:
                out.append((name, value))
        out.extend(("label", label) for label in self.labels)
        if self.limit != 20:
            out.append(("limit", str(self.limit)))
        if cursor is not None:
            out.append(("cursor", cursor))
        return out

    @property
    def active(self) -> bool:
        return any(
            v is not None for v in (self.op, self.phase, self.backfill, self.since, self.until)
        ) or bool(self.labels)


def _parse_cursor(cursor: str) -> tuple[int, str]:
    started, _, run_id = cursor.partition(".")
    try:
        return int(started), str(RunId(run_id))
    except ValueError:
        raise InvalidInput("usage", "cursor is not one this dashboard made") from None


def _run_row(summary: RunSummary, driver: DriverStatus | None) -> dict[str, Any]:
    """One `mfm runs --json` row."""
    row: dict[str, Any] = summary.model_dump(mode="json")
    row["duration_ms"] = summary.duration_ms
    row["interrupted"] = driver is not None and driver.interrupted
    row["driver"] = driver.to_json() if driver is not None else None
    return row


def short_ids(run_ids: list[str]) -> dict[str, str]:
    """Each id's shortest prefix of at least `SHORT_ID` characters unique among `run_ids`."""
    out: dict[str, str] = {}
    for rid in run_ids:
        n = SHORT_ID
        while n < len(rid) and any(o != rid and o.startswith(rid[:n]) for o in run_ids):
            n += 1
        out[rid] = rid[:n]
    return out


# -- a run ----------------------------------------------------------------------------------------


@dataclass
class RunView:
    """A run decoded for display: its history, and its plan's shape when the code can
    re-derive it (`mfm_dist.ui.loading`)."""

    run_id: RunId
    history: RunHistory
    plan: ExecutionPlan | None
    run_config: RunConfig | None
    plan_problem: str | None
    order: list[str]
    preds: list[list[int]]
    levels: list[int]
    position: dict[str, int]
    shape: PlanShape | None = None
    succs: list[list[int]] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """How the first load spent its time (seconds by step; `scripts/bench_ui.py`)."""
    plan_s: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    report: RunReport | None = None
    report_head: int = -1
    report_at: float = 0.0

    @classmethod
    def build(cls, history: RunHistory, shape: PlanShape | None, problem: str | None) -> RunView:
        if shape is not None:
            return cls(
                run_id=history.run_id,
                history=history,
                plan=shape.plan,
                run_config=shape.manifest.run_config,
                plan_problem=None,
                order=shape.order,
                preds=shape.preds,
                levels=shape.levels,
                position=shape.position,
                shape=shape,
                succs=shape.succs,
            )
        order = list(history.states)
        return cls(
            run_id=history.run_id,
            history=history,
            plan=None,
            run_config=None,
            plan_problem=problem,
            order=order,
            preds=[[] for _ in order],
            levels=[0] * len(order),
            position={s: i for i, s in enumerate(order)},
        )

    @property
    def finished(self) -> bool:
        return self.history.completed is not None

    def successors(self, i: int) -> list[int]:
        if self.succs is not None:
            return self.succs[i]
        return [j for j, ps in enumerate(self.preds) if i in ps]


class Dashboard:
    """The dashboard's read side over one `App` (its stores, registry and id lookups)."""

    def __init__(self, app: App, *, cache_size: int = 8) -> None:
        self.app = app
        self._views: Lru[RunView] = Lru(cache_size)
        self._lock = threading.Lock()

    # -- stores ----------------------------------------------------------------------------------
    @property
    def events(self) -> Any:
        return self.app.events

    def where(self) -> str:
        return self.app.events_location()

    def resolve(self, text: str) -> RunId:
        """A full run id, or a unique prefix (≥ 8 characters) of one."""
        return self.app.run_id(text)

    # -- runs ------------------------------------------------------------------------------------
    def runs(self, filters: RunFilters) -> RunsPage:
        """A page of `mfm runs` rows (newest first) and the cursor of the next page: keyset
        paging on (start time, run id), within the filters' time window."""
        now = now_ms()
        query = run_query(
            op=filters.op,
            phase=filters.phase,
            labels=filters.labels,
            backfill=filters.backfill,
            since=filters.since,
            until=filters.until,
            now_ms=now,
        )
        after: tuple[int, str] | None = None
        if filters.cursor is not None:
            after = _parse_cursor(filters.cursor)
            until = after[0] + 1
            if query.until_ms is None or until < query.until_ms:
                query = query.model_copy(update={"until_ms": until})
        want = filters.limit + 1
        fetch = want
        while True:
            found = self.events.list_runs(limit=fetch, query=query)
            rows = [
                s for s in found
                if after is None or (s.started_ms, str(s.run_id)) < after
            ]  # fmt: skip
            if len(rows) >= want or len(found) < fetch:
                break
            fetch *= 2  # many runs started in the cursor's millisecond: read further
        page = rows[: filters.limit]
        more = len(rows) > filters.limit
        next_cursor = f"{page[-1].started_ms}.{page[-1].run_id}" if more and page else None
        drivers = {
            str(s.run_id): d
            for s in page
            if s.phase == RunPhase.RUNNING and (d := driver_status(self.events, str(s.run_id)))
        }
        return RunsPage(
            rows=[_run_row(s, drivers.get(str(s.run_id))) for s in page],
            next_cursor=next_cursor,
            summaries=page,
            drivers=drivers,
        )

    def running_count(self) -> int:
        from mfm_dist.results import RunQuery

        return len(self.events.list_runs(query=RunQuery(phase=RunPhase.RUNNING)))

    # -- one run ---------------------------------------------------------------------------------
    def view(self, rid: RunId) -> RunView:
        """The run, decoded (cached) and brought up to date."""
        key = str(rid)
        with self._lock:
            view = self._views.get(key)
        if view is not None:
            if not view.finished:
                with view.lock, gc_paused():
                    view.history.refresh(self.events)
            return view
        with gc_paused():
            view = self._load(rid)
        with self._lock:
            self._views.put(key, view)
        return view

    @cached_property
    def _plans(self) -> PlanCache:
        """Plans by manifest id, shared by every run of one manifest (`mfm_dist.ui.loading`)."""
        return PlanCache()

    def _load(self, rid: RunId) -> RunView:
        app = self.app
        loaded = load_view(app.events, app.artifacts, app.registry(), self._plans, rid)
        view = RunView.build(loaded.history, loaded.shape, loaded.problem)
        view.timings, view.plan_s = loaded.timings, loaded.plan_s
        return view

    def leases(self, view: RunView) -> Mapping[str, LeaseView] | None:
        """Live attempt leases (distributed backend; None elsewhere)."""
        cluster = self.app.cluster()
        if cluster is None:
            return None
        open_ids = [state_id for state_id, _ in view.history.open_attempts()]
        return cluster.leases(str(view.run_id), open_ids)

    def report(self, view: RunView) -> RunReport:
        """`run_report` of the run (what `mfm status` shows), reused while nothing changed."""
        with view.lock:
            head = view.history.head
            fresh = view.report is not None and view.report_head == head
            if fresh and (view.finished or time.monotonic() - view.report_at < REPORT_TTL_S):
                assert view.report is not None
                return view.report
            leases = self.leases(view) if not view.finished else None
            with gc_paused():
                report = run_report(
                    view.history,
                    view.plan,
                    view.run_config,
                    leases,
                    snapshots=SnapshotStore(self.app.artifacts) if view.finished else None,
                )
            view.report, view.report_head, view.report_at = report, head, time.monotonic()
            return report

    def driver(self, view: RunView) -> DriverStatus | None:
        if view.finished:
            return None
        return driver_status(self.events, str(view.run_id))

    def status(self, rid: RunId) -> dict[str, Any]:
        """`mfm status --json`."""
        view = self.view(rid)
        report = self.report(view)
        row: dict[str, Any] = report.model_dump(mode="json")
        driver = self.driver(view)
        row["interrupted"] = driver is not None and driver.interrupted
        row["driver"] = driver.to_json() if driver is not None else None
        return row

    def live(self, rid: RunId) -> dict[str, Any]:
        """The run's progress in a compact form for the page's live graph: one status letter
        per state in canonical order, the counts, and the error code of every failed or
        retrying state."""
        view = self.view(rid)
        report = self.report(view)
        letters = "".join(STATUS_LETTERS[s.status] for s in report.states)
        codes = {
            str(i): s.last_error_code
            for i, s in enumerate(report.states)
            if s.last_error_code is not None
            and s.status in (StateStatus.FAILED, StateStatus.RETRYING)
        }
        return {
            "run_id": report.run_id,
            "phase": report.phase.value,
            "head_seq": report.head_seq,
            "counts": report.counts,
            "statuses": letters,
            "error_codes": codes,
            "failed_state": report.failed_state,
            "error": report.error.model_dump(mode="json") if report.error else None,
            "ended_ms": view.history.envelopes[-1].ts_millis if view.finished else None,
        }

    def events_page(self, rid: RunId, from_seq: int, limit: int) -> list[JsonValue]:
        """Envelopes `from_seq …` (at most `limit`), as `mfm events --json` prints them."""
        if from_seq < 1 or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("usage", f"from must be ≥ 1 and limit within 1..{MAX_PAGE}")
        envelopes = self.events.read_range(rid, from_seq, from_seq + limit - 1)
        if not envelopes and from_seq == 1:
            raise NotFound(f"run {rid} not found", code="run_not_found")
        return [orjson.loads(env.to_bytes()) for env in envelopes]

    def context(self, rid: RunId, state: str | None) -> JsonValue:
        """`mfm context RUN [--state S]`: the final (or a state's) snapshot."""
        view = self.view(rid)
        history = view.history
        if state is not None:
            sid = self.state_id(view, state)
            record = history.states.get(sid)
            if record is None:
                raise NotFound(f"run {rid} has no attempt of {sid}", code="state_not_found")
            snapshot_id = record.snapshot_id
            if snapshot_id is None:
                raise InvalidInput("state_not_completed", f"{sid} has not completed in run {rid}")
        else:
            completed = history.completed
            if completed is None or completed.final_snapshot_id is None:
                raise InvalidInput("run_not_finished", f"run {rid} has no final snapshot yet")
            snapshot_id = str(completed.final_snapshot_id)
        return SnapshotStore(self.app.artifacts).load(snapshot_id)

    def state_id(self, view: RunView, given: str) -> str:
        """A full state id, or a unique suffix (`item_0003`)."""
        if given in view.position or given in view.history.states:
            return given
        matches = [s for s in view.order if s.endswith("." + given)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidInput("state_ambiguous", f"{given} matches {len(matches)} states")
        raise NotFound(f"run {view.run_id} has no state {given}", code="state_not_found")

    def state_detail(self, rid: RunId, state: str) -> dict[str, Any]:
        """One state: its status, neighbours, attempts (with workers), the delta it wrote
        against its base, the facts it bound and the domain events it emitted."""
        view = self.view(rid)
        sid = self.state_id(view, state)
        report = self.report(view)
        i = view.position.get(sid)
        status = report.states[i] if i is not None and i < len(report.states) else None
        holders = self._holders(view)
        record = view.history.states.get(sid)
        attempts: list[dict[str, Any]] = []
        delta: dict[str, Any] | None = None
        delta_error: dict[str, Any] | None = None
        if record is not None:
            for att in record.attempts:
                attempts.append(
                    {
                        "attempt": att.attempt,
                        "base_snapshot_id": att.base_snapshot_id,
                        "entered_ms": att.ts_entered,
                        "closed_ms": att.ts_closed,
                        "outcome": att.outcome or "open",
                        "snapshot_id": att.snapshot_id,
                        "error": att.error.model_dump(mode="json") if att.error else None,
                        "worker": holders.get((sid, att.attempt)),
                    }
                )
            last = record.last
            if last is not None and last.outcome == "completed" and last.snapshot_id:
                try:
                    delta = self._delta(last.base_snapshot_id, last.snapshot_id)
                except MfmError as exc:  # unreadable, or refused (secret-shaped): say why
                    info = exc.info.redacted()
                    delta_error = info.model_dump(mode="json", exclude={"details"})
        facts: list[dict[str, Any]] = []
        domain: list[dict[str, Any]] = []
        for env in view.history.envelopes:
            if env.state_id is None or str(env.state_id) != sid:
                continue
            ev = env.event
            if not isinstance(ev, DomainEvent):
                continue
            if ev.name == FACT_RECORDED and isinstance(ev.payload, dict):
                facts.append(
                    {
                        "seq": env.seq,
                        "attempt": env.attempt,
                        "key": ev.payload.get("key"),
                        "payload_id": ev.payload.get("payload_id"),
                    }
                )
            else:
                domain.append(
                    {
                        "seq": env.seq,
                        "attempt": env.attempt,
                        "name": ev.name,
                        "payload": _preview(ev.payload) if ev.payload is not None else None,
                        "payload_ref": str(ev.payload_ref) if ev.payload_ref else None,
                    }
                )
        for fact in facts[:SHOWN_FACTS]:
            fact["payload"] = self._fact_payload(fact.get("payload_id"))
        return {
            "run_id": str(view.run_id),
            "state_id": sid,
            "index": i,
            "status": status.model_dump(mode="json") if status is not None else None,
            "predecessors": [view.order[p] for p in view.preds[i]] if i is not None else [],
            "successors": [view.order[j] for j in view.successors(i)] if i is not None else [],
            "attempts": attempts,
            "delta": delta,
            "delta_error": delta_error,
            "facts": facts,
            "events": domain,
        }

    def _delta(self, base_id: str, snapshot_id: str) -> dict[str, Any]:
        """What a completed attempt changed: the keys it wrote (with their values before
        and after) and the keys it removed (docs/merge.md: the delta)."""
        snapshots = SnapshotStore(self.app.artifacts)
        base = snapshots.load(base_id)
        change = compute_delta(base, snapshots.load(snapshot_id))
        return {
            "base_snapshot_id": base_id,
            "snapshot_id": snapshot_id,
            "writes": {k: _preview(v) for k, v in sorted(change.writes.items())},
            "deletes": sorted(change.deletes),
            "before": {k: _preview(base[k]) for k in sorted(change.keys) if k in base},
        }

    def _fact_payload(self, payload_id: object) -> JsonValue:
        if not isinstance(payload_id, str):
            return None
        try:
            data = self.app.artifacts.get(payload_id)
            return _preview(orjson.loads(data))
        except (MfmError, ValueError):
            return None

    def _holders(self, view: RunView) -> dict[tuple[str, int], str]:
        """Who ran which attempt: the cluster's holder record, live leases, or the embedded
        run's live driver."""
        holders: dict[tuple[str, int], str] = {}
        cluster = self.app.cluster()
        if cluster is not None:
            with contextlib.suppress(Exception):  # a hint only: the timeline works without it
                holders.update(cluster.holders(str(view.run_id)))
            for state_id, lease in (self.leases(view) or {}).items():
                holders.setdefault((state_id, lease.attempt), lease.worker)
        elif not view.finished:
            driver = self.driver(view)
            if (
                driver is not None
                and driver.driver is not None
                and driver.liveness == Liveness.LIVE
            ):
                where = driver.driver.where
                for state_id, record in view.history.states.items():
                    for att in record.attempts:
                        if att.ts_entered >= driver.driver.since_ms:
                            holders[(state_id, att.attempt)] = where
        return holders

    def attempts(self, rid: RunId) -> dict[str, Any]:
        """Every attempt of the run, for the timeline: when it ran, how it ended, who ran it
        (when known), and the backoff before its retry."""
        view = self.view(rid)
        holders = self._holders(view)
        config = view.run_config
        rows: list[dict[str, Any]] = []
        for state_id, record in view.history.states.items():
            for k, att in enumerate(record.attempts):
                error = att.error
                retry_at = None
                if (
                    error is not None
                    and att.ts_closed is not None
                    and config is not None
                    and (error.retryable or error.code == "orphan_attempt_recovered")
                    and (k + 1 < len(record.attempts) or not view.finished)
                ):
                    delay = backoff_delay(config.retry_policy.backoff, att.attempt)
                    retry_at = att.ts_closed + delay.total_millis
                rows.append(
                    {
                        "state_id": state_id,
                        "attempt": att.attempt,
                        "entered_ms": att.ts_entered,
                        "closed_ms": att.ts_closed,
                        "outcome": att.outcome or "open",
                        "error_code": error.code if error is not None else None,
                        "worker": holders.get((state_id, att.attempt)),
                        "retry_at_ms": retry_at,
                    }
                )
        rows.sort(key=lambda r: (r["entered_ms"], r["state_id"]))
        history = view.history
        return {
            "run_id": str(view.run_id),
            "phase": self.report(view).phase.value,
            "started_ms": history.started_ms,
            "ended_ms": history.envelopes[-1].ts_millis if view.finished else None,
            "now_ms": now_ms(),
            "attempts": rows,
        }

    def verify(self, rid: RunId) -> dict[str, Any]:
        """`mfm verify --json`."""
        from mfm_dist.verify import verify_run

        result = verify_run(self.app.events, self.app.artifacts, self.app.registry(), rid)
        if any(v.code == "run_not_found" for v in result.violations):
            raise NotFound(f"run {rid} not found", code="run_not_found")
        out: dict[str, Any] = orjson.loads(result.model_dump_json())
        return out

    def replay(self, rid: RunId) -> dict[str, Any]:
        """`mfm replay --json`."""
        from mfm_dist.replay_check import replay_run

        result = replay_run(self.app.events, self.app.artifacts, self.app.registry(), rid)
        out: dict[str, Any] = orjson.loads(result.model_dump_json())
        return out

    def ops(self) -> dict[str, Any]:
        """`mfm ops --json`."""
        registry = self.app.registry()
        operations = sorted(registry.operations(), key=lambda o: (o.op_id, o.op_version))
        pipelines = sorted(registry.pipelines(), key=lambda p: str(p.machine_id))
        return {
            "operations": [
                {"op_id": o.op_id, "op_version": o.op_version, "description": o.description}
                for o in operations
            ],
            "pipelines": [p.model_dump(mode="json") for p in pipelines],
        }


def _preview(value: JsonValue) -> JsonValue:
    """`value` with long strings cut to `VALUE_PREVIEW` characters (display only)."""
    if isinstance(value, str):
        if len(value) > VALUE_PREVIEW:
            return value[:VALUE_PREVIEW] + f"… ({len(value)} characters)"
        return value
    if isinstance(value, dict):
        return {k: _preview(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_preview(v) for v in value]
    return value
