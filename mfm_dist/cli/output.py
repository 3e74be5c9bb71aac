"""Human-readable rendering for the CLI (tables and summaries); JSON output is
written by the commands directly from the library's models."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mfm_dist.canonical import JsonValue
from mfm_dist.cli.drivers import DriverStatus, Liveness
from mfm_dist.events import (
    DomainEvent,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    StateCompleted,
    StateEntered,
    StateFailed,
    event_name,
)
from mfm_dist.operations import Operation, Pipeline
from mfm_dist.reports import RunReport, StateStatus
from mfm_dist.results import RunPhase, RunResult, RunSummary
from mfm_dist.secrets import contains_secret

PLAIN_WIDTH = 200
SHORT_ID = 12

STATUS_STYLE = {
    StateStatus.COMPLETED: "green",
    StateStatus.SKIPPED: "blue",
    StateStatus.RUNNING: "cyan",
    StateStatus.RETRYING: "yellow",
    StateStatus.FAILED: "red",
    StateStatus.PENDING: "dim",
}
PHASE_STYLE = {
    RunPhase.COMPLETED: "green",
    RunPhase.FAILED: "red",
    RunPhase.RUNNING: "cyan",
    RunPhase.CANCELLED: "yellow",
}


def stdout_console() -> Console:
    """A console on the current stdout; wide when piped so tables do not fold ids."""
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = PLAIN_WIDTH
    return console


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def short(artifact_id: str | None) -> str:
    return artifact_id[:SHORT_ID] if artifact_id else "-"


def format_ms(ts_millis: int) -> str:
    return datetime.fromtimestamp(ts_millis / 1000, UTC).isoformat(timespec="milliseconds")


def format_duration(ms: int) -> str:
    """`850ms`, `12.3s`, `5m 03s`, `2h 05m`, `3d 04h`."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d {seconds % 86_400 // 3600:02d}h"


def run_duration(summary: RunSummary, now_ms: int) -> str:
    """A finished run's duration; a running one's time so far, marked `+`."""
    if summary.ended_ms is not None:
        return format_duration(max(summary.ended_ms - summary.started_ms, 0))
    if summary.phase == RunPhase.RUNNING:
        return format_duration(max(now_ms - summary.started_ms, 0)) + "+"
    return "-"


def format_labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def compact_json(value: JsonValue, limit: int = 80) -> str:
    """A one-line preview of a (secret-free) JSON payload."""
    if contains_secret(value):
        return "<redacted>"
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty_json(value: JsonValue) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def result_lines(result: RunResult, skipped: Iterable[str] | None = None) -> list[str]:
    """The closing summary of `mfm run` / `mfm resume`."""
    lines = [f"run {result.run_id}: {result.phase.value}"]
    if result.failed_state is not None:
        lines.append(f"failed state: {result.failed_state}")
    if result.error is not None:
        lines.append(f"error code: {result.error.code} ({result.error.message})")
    lines.append(f"final snapshot: {result.final_snapshot_id or '-'}")
    if skipped is not None:
        names = list(skipped)
        lines.append(f"skipped states: {len(names)}")
        lines.extend(f"  skipped {name}" for name in names)
    return lines


def driver_note(run_id: str, status: DriverStatus) -> str:
    """One line on who drives a running embedded run (`mfm status`)."""
    d = status.driver
    who = f"{d.where} (since {format_ms(d.since_ms)})" if d is not None else "a process"
    if status.liveness == Liveness.LIVE:
        return f"driven by {who}, alive"
    if status.liveness == Liveness.GONE:
        return f"interrupted: its driver {who} is gone — resume with: mfm resume {run_id}"
    return f"driven by {who} on another host: cannot check it from here"


def driver_phase(run_id: str, status: DriverStatus) -> str:
    """The phase cell of a running embedded run in `mfm runs`."""
    if status.liveness == Liveness.GONE:
        return f"[yellow]interrupted — resume with: mfm resume {run_id}[/]"
    where = escape(status.driver.where) if status.driver is not None else ""
    if status.liveness == Liveness.LIVE:
        return f"[cyan]Running[/] ({where})" if where else "[cyan]Running[/]"
    return f"[cyan]Running[/] (driven from {where}: cannot check it from here)"


def render_report(
    console: Console, report: RunReport, driver: DriverStatus | None = None
) -> None:
    """`mfm status`: the run header, then one row per state."""
    style = PHASE_STYLE.get(report.phase, "")
    console.print(f"run {report.run_id} ({escape(report.op_id)}): [{style}]{report.phase.value}[/]")
    if driver is not None:
        note_style = "yellow" if driver.interrupted else ""
        console.print(escape(driver_note(report.run_id, driver)), style=note_style, soft_wrap=True)
    console.print(
        f"started {format_ms(report.started_ms)}, {report.head_seq} events, "
        f"final snapshot {report.final_snapshot_id or '-'}"
    )
    if report.failed_state is not None:
        console.print(f"failed state: {escape(report.failed_state)}")
    if report.error is not None:
        console.print(f"error code: {escape(report.error.code)} ({escape(report.error.message)})")
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items() if n)
    console.print(f"states: {counts}")
    table = Table(show_edge=False, pad_edge=False)
    for column in ("state", "status", "attempts", "snapshot", "last error", "why"):
        table.add_column(column, no_wrap=column in ("state", "snapshot"))
    for state in report.states:
        table.add_row(
            escape(state.state_id),
            f"[{STATUS_STYLE[state.status]}]{state.status.value}[/]",
            str(state.attempts),
            short(state.snapshot_id),
            escape(state.last_error_code or ""),
            escape(state.detail or ""),
        )
    console.print(table)


def render_runs(
    console: Console,
    runs: list[RunSummary],
    where: str,
    drivers: Mapping[str, DriverStatus] | None = None,
    *,
    now_ms: int = 0,
    filtered: bool = False,
) -> None:
    """`mfm runs`; a running run with a driver record says whether its driver is alive."""
    matching = " matching the filters" if filtered else ""
    if not runs:
        console.print(f"no runs{matching} in {escape(where)}")
        return
    drivers = drivers or {}
    title = f"runs{matching} in {escape(where)} (newest first)"
    table = Table(title=title, show_edge=False, pad_edge=False)
    for column in ("run", "op", "started (UTC)", "duration", "phase", "events", "labels"):
        table.add_column(column, no_wrap=column not in ("phase", "labels"))
    for summary in runs:
        style = PHASE_STYLE.get(summary.phase, "")
        phase = f"[{style}]{summary.phase.value}[/]"
        driver = drivers.get(str(summary.run_id))
        if driver is not None and summary.phase == RunPhase.RUNNING:
            phase = driver_phase(str(summary.run_id), driver)
        table.add_row(
            str(summary.run_id),
            escape(summary.op_id),
            format_ms(summary.started_ms),
            run_duration(summary, now_ms),
            phase,
            str(summary.head_seq),
            escape(format_labels(summary.labels)),
        )
    console.print(table)


def event_detail(env: EventEnvelope) -> str:
    ev = env.event
    if isinstance(ev, RunStarted):
        return (
            f"op {ev.op_id}, manifest {short(ev.manifest_id)}, "
            f"initial {short(ev.initial_snapshot_id)}"
        )
    if isinstance(ev, StateEntered):
        return f"base {short(ev.base_snapshot_id)}"
    if isinstance(ev, StateCompleted):
        return f"snapshot {short(ev.context_snapshot_id)}"
    if isinstance(ev, StateFailed):
        retry = "retryable" if ev.error.retryable else "not retryable"
        return f"{ev.error.code} ({retry}): {ev.error.message}"
    if isinstance(ev, RunCompleted):
        return f"{ev.status.value}, final {short(ev.final_snapshot_id)}"
    if isinstance(ev, DomainEvent):
        if ev.payload_ref is not None:
            return f"payload {short(ev.payload_ref)}"
        return compact_json(ev.payload)
    return ""


def render_events(console: Console, envelopes: list[EventEnvelope]) -> None:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("seq", "time (UTC)", "state", "attempt", "event", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for env in envelopes:
        table.add_row(
            str(env.seq),
            format_ms(env.ts_millis),
            escape(str(env.state_id)) if env.state_id is not None else "",
            str(env.attempt) if env.attempt is not None else "",
            escape(event_name(env.event)),
            escape(event_detail(env)),
            style="red" if isinstance(env.event, StateFailed) else None,
        )
    console.print(table)


def render_ops(console: Console, ops: list[Operation], pipelines: list[Pipeline]) -> None:
    table = Table(title="operations", show_edge=False, pad_edge=False)
    for column in ("op", "version", "description"):
        table.add_column(column, no_wrap=column != "description")
    for op in ops:
        table.add_row(escape(op.op_id), escape(op.op_version), escape(op.description))
    console.print(table)
    if not pipelines:
        return
    ptable = Table(title="pipelines", show_edge=False, pad_edge=False)
    for column in ("pipeline", "version", "steps"):
        ptable.add_column(column)
    for pipeline in pipelines:
        steps = " → ".join(f"{s.step_id}={s.op_id}@{s.op_version}" for s in pipeline.steps)
        ptable.add_row(
            escape(str(pipeline.machine_id)), escape(pipeline.pipeline_version), escape(steps)
        )
    console.print(ptable)
