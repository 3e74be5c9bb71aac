"""`mfm backfill`: many runs of one op over a set of partitions, as one durable job
(docs/backfills.md).

`create` plans (validating every partition, deciding per partition what happens given the
runs that exist), stores the plan and records the issue in the backfill's journal. On the
embedded backend the partitions then run here, in a local pool; `resume NAME` continues
after this process was killed. With `--backend celery` the cluster's control workers
drive it and the command returns (or follows it with `--wait`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mfm_dist.backfill import partitions as sources
from mfm_dist.backfill.driver import BackfillDriver, StepOutcome
from mfm_dist.backfill.local import LocalCanceller, LocalPool, RunLock
from mfm_dist.backfill.model import (
    BackfillError,
    BackfillPlan,
    CancelRequested,
    Partition,
    Paused,
    Rate,
    Reprocess,
    Resumed,
    check_name,
    parse_rate,
)
from mfm_dist.backfill.planner import (
    CreateRequest,
    IssueResult,
    append_records,
    create,
    load_state,
    require_state,
    retry_failed,
)
from mfm_dist.backfill.report import BackfillReport, build_report
from mfm_dist.backfill.state import BackfillState, PartStatus, Phase
from mfm_dist.cli.app import MAX_ATTEMPTS_LIMIT, MAX_FAN_OUT, App, cli, json_flag, pass_app
from mfm_dist.cli.cancelling import default_requester
from mfm_dist.cli.drivers import DrivenElsewhere, DriverLock
from mfm_dist.cli.errors import CliError, ExitCode
from mfm_dist.cli.options import PROFILES, parse_input
from mfm_dist.cli.output import format_ms, stderr_console
from mfm_dist.cli.running import _run_config, on_cluster
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase
from mfm_dist.stores.base import EventStore

LOCAL_POLL_S = 0.1
FOLLOW_POLL_S = 0.5


@cli.group()
def backfill() -> None:
    """Backfills: one op over many partitions, as one durable, controllable job."""


# -- create ------------------------------------------------------------------------------------


def _partitions(
    file: str | None,
    file_format: str | None,
    values: str | None,
    start: str | None,
    end: str | None,
    every: str | None,
    base: Any,
    field: str | None,
) -> tuple[list[Partition], str]:
    given = [name for name, v in (("--file", file), ("--partitions", values),
                                  ("--from/--to", start or end)) if v]  # fmt: skip
    if len(given) != 1:
        raise BackfillError(
            "backfill_source_invalid",
            "give exactly one partition source: --file, --partitions, or --from/--to/--every"
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if file:
        path = Path(file)
        kind = file_format or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
        if kind == "csv":
            return sources.from_csv(path, base, field), f"csv:{path.name}"
        return sources.from_jsonl(path, base, field), f"jsonl:{path.name}"
    if values is not None:
        return sources.from_values(sources.split_list(values), base, field), "list"
    if not (start and end and every):
        raise BackfillError("backfill_range_invalid", "a range needs --from, --to and --every")
    parts = sources.from_range(start, end, every, base, field)
    return parts, f"range:{start}..{end}/{every}"


@backfill.command("create")
@click.argument("op")
@click.option("--name", required=True, help="The backfill's name (its identity: keys, labels).")
@click.option("--file", "file", metavar="FILE", help="Partitions: JSON Lines of inputs, or CSV.")
@click.option("--format", "file_format", type=click.Choice(["jsonl", "csv"]), help="FILE's format.")
@click.option("--partitions", "values", metavar="A,B,…", help="Partitions: an explicit list.")
@click.option("--from", "start", metavar="DATE", help="Range start (YYYY-MM-DD or ISO date-time).")
@click.option("--to", "end", metavar="DATE", help="Range end, inclusive.")
@click.option("--every", metavar="STEP", help="Range step: 1d, 6h, 15m, 30s, 1w.")
@click.option("--field", metavar="NAME", help="Input key of the partition value.")
@click.option("--input", "raw_input", metavar="JSON|@FILE", help="Base input of every partition.")
@click.option(
    "--reprocess",
    type=click.Choice([m.value for m in Reprocess]),
    default="missing",
    show_default=True,
    help="Partitions that already have a run: missing (completed/failed: skip), failed "
    "(failed: new run), all (new run). Running ones are always attached to.",
)
@click.option("--max-active", type=click.IntRange(1, 10_000), default=16, show_default=True)
@click.option("--rate", "rate_text", metavar="R/s", help="At most R new runs per s (or /m, /h).")
@click.option(
    "--dry-run", is_flag=True, help="Print what would happen per partition; write nothing."
)
@click.option(
    "--backend",
    type=click.Choice(["local", "celery"]),
    default="local",
    envvar="MFM_BACKEND",
    show_default=True,
)
@click.option(
    "--detach", is_flag=True, help="Record the backfill and return (local: no run starts)."
)
@click.option("--wait", is_flag=True, help="With --backend celery: follow it until it finishes.")
@click.option("--version", "op_version", help="Op version (default: the newest).")
@click.option("--fan-out", type=click.IntRange(1, MAX_FAN_OUT), metavar="N")
@click.option(
    "--max-attempts", type=click.IntRange(0, MAX_ATTEMPTS_LIMIT), default=1, show_default=True
)
@click.option("--backoff-ms", type=click.IntRange(0, None), default=0, show_default=True)
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="normal", show_default=True)
@json_flag
@pass_app
def create_cmd(
    app: App,
    op: str,
    name: str,
    file: str | None,
    file_format: str | None,
    values: str | None,
    start: str | None,
    end: str | None,
    every: str | None,
    field: str | None,
    raw_input: str | None,
    reprocess: str,
    max_active: int,
    rate_text: str | None,
    dry_run: bool,
    backend: str,
    detach: bool,
    wait: bool,
    op_version: str | None,
    fan_out: int | None,
    max_attempts: int,
    backoff_ms: int,
    profile: str,
    as_json: bool,
) -> None:
    """Plan and start a backfill of OP over partitions (a file, a list or a date range)."""
    check_name(name)
    rate: Rate | None = parse_rate(rate_text) if rate_text is not None else None
    base = parse_input(raw_input) if raw_input is not None else None
    parts, source = _partitions(file, file_format, values, start, end, every, base, field)
    config = _run_config(
        fan_out=fan_out, max_attempts=max_attempts, backoff_ms=backoff_ms, profile=profile
    )
    request = CreateRequest(
        name=name,
        op=op,
        version=op_version,
        config=config,
        field=field,
        source=source,
        partitions=parts,
        reprocess=Reprocess(reprocess),
        max_active=max_active,
        rate=rate,
        backend="cluster" if backend == "celery" else "local",
    )
    if dry_run:
        app.read_only = True
        result = create(app.events, app.artifacts, app.registry(), request, dry_run=True)
        _print_dry_run(result, as_json)
        return
    result = create(app.events, app.artifacts, app.registry(), request)
    _announce(result, as_json)
    _continue(app, name, backend == "celery", detach, wait, as_json)


def _print_dry_run(result: IssueResult, as_json: bool) -> None:
    totals = result.totals()
    if as_json:
        rows = [
            {
                "partition": r.value,
                "action": r.decision.split("_", 1)[0],
                "decision": r.decision,
                "run_id": r.run_id,
                "existing_run": r.existing_run,
                "existing_phase": r.existing_phase.value if r.existing_phase else None,
                "generation": r.generation,
            }
            for r in result.rows
        ]
        click.echo(json.dumps({"plan_id": result.plan_id, "partitions": rows, "totals": totals}))
        return
    width = min(max((len(r.value) for r in result.rows), default=9), 40)
    for r in result.rows:
        action = r.decision.split("_", 1)[0]
        if r.existing_run is None:
            said = f"{action}"
        else:
            phase = r.existing_phase.value.lower() if r.existing_phase else "?"
            said = f"{action}: {phase} as {r.existing_run}"
        click.echo(f"{r.value:<{width}}  {said}")
    click.echo(
        f"totals: run {totals['run']}, skip {totals['skip']}, attach {totals['attach']}, "
        f"rerun {totals['rerun']} ({len(result.rows)} partitions; dry run: nothing recorded)"
    )


def _announce(result: IssueResult, as_json: bool) -> None:
    totals = result.totals()
    state = result.state
    issue = state.issue.issue if state is not None and state.issue is not None else 0
    if as_json:
        body = {
            "name": result.plan.name,
            "outcome": result.outcome,
            "issue": issue,
            "plan_id": result.plan_id,
            "partitions": len(result.rows),
            "totals": totals,
        }
        stderr_console().print(json.dumps(body), markup=False, highlight=False, soft_wrap=True)
        return
    what = {
        "created": "created",
        "reissued": f"issued again (issue {issue})",
        "unchanged": "exists with this plan; nothing new recorded",
    }.get(result.outcome, result.outcome)
    stderr_console().print(
        f"backfill {result.plan.name}: {what} — plan {result.plan_id[:12]}, "
        f"{len(result.rows)} partitions: run {totals['run']}, skip {totals['skip']}, "
        f"attach {totals['attach']}, rerun {totals['rerun']}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _continue(app: App, name: str, celery: bool, detach: bool, wait: bool, as_json: bool) -> None:
    """After a state change: drive here (local), or wake the cluster's driver."""
    state = require_state(app.events, name)
    assert state.issue is not None
    if state.issue.backend == "cluster" or celery:
        _wake_cluster(app, name)
        if wait:
            _follow(app, name, as_json)
        else:
            _print_status(app, name, as_json, follow=False)
        return
    if detach:
        _print_status(app, name, as_json, follow=False)
        return
    _drive_local(app, name, as_json)


def _wake_cluster(app: App, name: str) -> None:
    with on_cluster(app) as rt:
        from workers.backfills import arm

        arm(rt.redis, name)


# -- driving here ------------------------------------------------------------------------------


def _command(app: App, *args: str) -> str:
    return shlex.join(["mfm", *app.global_options(), "backfill", *args])


@contextlib.contextmanager
def _backfill_lock(app: App, name: str) -> Iterator[DriverLock | None]:
    try:
        lock = DriverLock.acquire(app.events, f"backfill.{name}")
    except DrivenElsewhere as exc:
        who = exc.driver.where if exc.driver is not None else "another process"
        raise CliError(
            "backfill_driven_elsewhere",
            f"backfill {name} is being driven by {who}; follow it with "
            f"`{_command(app, 'status', name)}`",
        ) from None
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release(finished=load_state(app.events, name).finished is not None)


def _run_lock(app: App) -> RunLock:
    return run_driver_lock(app.events)


def run_driver_lock(events: EventStore) -> RunLock:
    """The pool's run lock: the run's driver record (`mfm runs` shows who drives it; a
    run another live process drives is left to it)."""

    @contextlib.contextmanager
    def lock(run_id: str) -> Iterator[bool]:
        try:
            held = DriverLock.acquire(events, run_id)
        except DrivenElsewhere:
            yield False
            return
        try:
            yield True
        finally:
            if held is not None:
                summary = events.run_summaries([RunId(run_id)]).get(run_id)
                held.release(finished=summary is not None and summary.phase != RunPhase.RUNNING)

    return lock


class _Stop:
    """First Ctrl-C: claim nothing new, let the runs in flight finish. Second: exit now
    (their attempts stay open; `mfm backfill resume` resumes them)."""

    def __init__(self, app: App, name: str) -> None:
        self.app, self.name = app, name
        self.requested = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested.is_set():
            self.requested.set()
            with contextlib.suppress(OSError):
                os.write(2, b"\ninterrupt: starting no new runs; letting the runs in flight "
                            b"finish (Ctrl-C again to stop now)\n")  # fmt: skip
            return
        resume = _command(self.app, "resume", self.name)
        with contextlib.suppress(OSError):
            os.write(2, f"error[interrupted]: backfill {self.name} stopped at once; "
                        f"continue with: {resume}\n".encode())  # fmt: skip
        os._exit(ExitCode.INTERRUPTED)


def _drive_local(app: App, name: str, as_json: bool) -> None:
    """Drive the backfill in this process until it finishes, is paused, or Ctrl-C."""
    state = require_state(app.events, name)
    assert state.issue is not None
    if state.finished is not None:
        _print_status(app, name, as_json, follow=False)
        return
    with _backfill_lock(app, name), _Stop(app, name) as stop:
        pool = LocalPool(
            app.events,
            app.artifacts,
            app.registry(),
            workers=state.issue.max_active,
            lock_run=_run_lock(app),
        )
        driver = BackfillDriver(
            app.events,
            app.artifacts,
            name,
            pool,
            LocalCanceller(app.events, name, default_requester()),
            poll_s=LOCAL_POLL_S,
            may_claim=lambda: not stop.requested.is_set(),
        )
        plan = driver.plan(state.issue.plan_id)
        show = not as_json and stderr_console().is_terminal
        view = _View(plan, lambda: driver.refresh())
        try:
            with _live(show, view):
                outcome = _loop(driver, pool, stop)
        finally:
            pool.wait()
            pool.shutdown()
    if stop.requested.is_set() and outcome.status != "finished":
        raise CliError(
            "interrupted",
            f"backfill {name} interrupted; continue with: {_command(app, 'resume', name)}",
            ExitCode.INTERRUPTED,
        )
    _print_status(app, name, as_json, follow=False)
    _exit_by(app, name)


def _loop(driver: BackfillDriver, pool: LocalPool, stop: _Stop) -> StepOutcome:
    while True:
        outcome = driver.step()
        if outcome.status == "finished":
            return outcome
        if pool.running() == 0:
            if stop.requested.is_set():
                return outcome
            if outcome.state.phase is Phase.PAUSED and not outcome.state.indices(
                PartStatus.CLAIMED
            ):
                return outcome
        wait = outcome.wake_s if outcome.wake_s is not None else LOCAL_POLL_S
        time.sleep(min(max(wait, 0.0), LOCAL_POLL_S))


# -- status ------------------------------------------------------------------------------------


class _View:
    """A live display of a backfill: a progress bar and its counts."""

    def __init__(self, plan: BackfillPlan, state: Any) -> None:
        self.plan, self.state = plan, state

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        try:
            report = build_report(self.state(), self.plan)
        except Exception:  # a display never fails the job
            return
        head = Table.grid(padding=(0, 1))
        head.add_column(no_wrap=True)
        head.add_column(no_wrap=True)
        head.add_row(
            Text(f"backfill {report.name}", style="bold"),
            ProgressBar(total=max(report.partitions, 1), completed=report.done, width=30),
        )
        yield head
        yield Text(_counts_line(report))


@contextlib.contextmanager
def _live(show: bool, view: _View) -> Iterator[None]:
    if not show:
        yield
        return
    with Live(view, console=stderr_console(), refresh_per_second=4, transient=False):
        yield


def _counts_line(r: BackfillReport) -> str:
    c = r.counts
    line = (
        f"{r.done}/{r.partitions} done | {r.phase} | completed {c['completed']} | "
        f"running {c['running']} | pending {c['pending']} | failed {c['failed']} | "
        f"cancelled {c['cancelled']} | rejected {c['rejected']} | not started {c['not_started']}"
    )
    rate = f" | {r.completed_per_s:g} runs/s"
    eta = f" | ETA {_duration(r.eta_s)}" if r.eta_s is not None else ""
    return line + rate + eta


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _report(app: App, name: str) -> tuple[BackfillState, BackfillReport]:
    state = require_state(app.events, name)
    assert state.issue is not None
    plan = BackfillPlan.load(app.artifacts, state.issue.plan_id)
    return state, build_report(state, plan)


def _exit_by(app: App, name: str) -> None:
    """After driving or following a backfill to its end: exit 1 unless every partition
    completed."""
    state = load_state(app.events, name)
    if state.finished is None:
        return
    counts = state.counts()
    if counts["completed"] != len(state.parts):
        raise click.exceptions.Exit(ExitCode.FAILED)


def _print_status(app: App, name: str, as_json: bool, *, follow: bool) -> None:
    state, report = _report(app, name)
    if follow and not as_json and stderr_console().is_terminal and state.finished is None:
        plan = BackfillPlan.load(app.artifacts, report.plan_id)
        view = _View(plan, lambda: load_state(app.events, name))
        with contextlib.suppress(KeyboardInterrupt), _live(True, view):
            while load_state(app.events, name).finished is None:
                time.sleep(FOLLOW_POLL_S)
        state, report = _report(app, name)
    if as_json:
        click.echo(report.model_dump_json())
        return
    rate = f", rate {report.rate}" if report.rate else ""
    click.echo(
        f"backfill {report.name}: {report.phase} (issue {report.issue}, reprocess "
        f"{report.reprocess}, {report.backend})"
    )
    click.echo(
        f"op {report.op}, plan {report.plan_id[:12]}, {report.partitions} partitions, "
        f"max active {report.max_active}{rate}"
    )
    c = report.counts
    click.echo(
        f"completed {c['completed']}  running {c['running']}  pending {c['pending']}  "
        f"failed {c['failed']}  cancelled {c['cancelled']}  rejected {c['rejected']}  "
        f"not started {c['not_started']}"
    )
    d = report.decisions
    skipped = sum(v for k, v in d.items() if k.startswith("skip"))
    reruns = sum(v for k, v in d.items() if k.startswith("rerun"))
    click.echo(
        f"runs started {report.started_runs}; skipped {skipped} (had a run), attached "
        f"{d.get('attach', 0)}, reruns {reruns}"
    )
    click.echo(
        f"elapsed {_duration(report.elapsed_s)}; started {report.started_per_s:g} runs/s, "
        f"completed {report.completed_per_s:g} runs/s; ETA {_duration(report.eta_s)}"
    )
    if report.paused_by:
        click.echo(f"paused by {report.paused_by}")
    if report.cancel_reason is not None:
        click.echo(f"cancel requested: {report.cancel_reason}")
    if report.failed:
        click.echo(f"failed partitions ({len(report.failed)}):")
        width = min(max(len(f.partition) for f in report.failed), 40)
        for f in report.failed[:50]:
            run = f"run {f.run_id}" if f.run_id else "no run"
            before = " (before this issue)" if f.skipped else ""
            click.echo(f"  {f.partition:<{width}}  {f.status:<9} {f.code or '-':<24} {run}{before}")
        if len(report.failed) > 50:
            click.echo(f"  … and {len(report.failed) - 50} more (--json lists all)")


@backfill.command("status")
@click.argument("name")
@click.option("--once", is_flag=True, help="Print once, even on a terminal.")
@json_flag
@pass_app
def status_cmd(app: App, name: str, once: bool, as_json: bool) -> None:
    """Counts by phase, rates, ETA and the failed partitions with their error codes (live
    on a terminal until the backfill finishes)."""
    app.read_only = True
    _print_status(app, name, as_json, follow=not once)


def _follow(app: App, name: str, as_json: bool) -> None:
    state = require_state(app.events, name)
    assert state.issue is not None
    plan = BackfillPlan.load(app.artifacts, state.issue.plan_id)
    show = not as_json and stderr_console().is_terminal
    with _live(show, _View(plan, lambda: load_state(app.events, name))):
        while load_state(app.events, name).finished is None:
            time.sleep(FOLLOW_POLL_S)
    _print_status(app, name, as_json, follow=False)
    _exit_by(app, name)


@backfill.command("list")
@json_flag
@pass_app
def list_cmd(app: App, as_json: bool) -> None:
    """Every backfill in the store, newest first."""
    app.read_only = True
    for summary in app.events.list_journals("backfill"):
        try:
            _, report = _report(app, summary.name)
        except BackfillError:
            continue
        if as_json:
            click.echo(report.model_dump_json())
            continue
        c = report.counts
        click.echo(
            f"{report.name}  {report.op}  {report.phase}  {report.done}/{report.partitions} done"
            f"  completed {c['completed']}  failed {c['failed'] + c['rejected']}  running "
            f"{c['running']}  created {format_ms(report.created_ms)}"
        )


# -- pause / resume / cancel / retry -----------------------------------------------------------


def _refuse_finished(state: BackfillState, what: str) -> None:
    if state.finished is not None:
        raise BackfillError(
            "backfill_finished",
            f"backfill {state.name} has finished ({state.phase.value}); nothing to {what}",
        )


@backfill.command("pause")
@click.argument("name")
@json_flag
@pass_app
def pause_cmd(app: App, name: str, as_json: bool) -> None:
    """Start no new runs (runs in flight go on); `resume` continues."""
    by = default_requester()

    def make(state: BackfillState) -> list[object] | None:
        if not state.exists:
            raise BackfillError("backfill_not_found", f"no backfill named {name!r}")
        _refuse_finished(state, "pause")
        if state.cancel is not None:
            raise BackfillError("backfill_cancelled", f"backfill {name} is being cancelled")
        return None if state.paused else [Paused(by=by)]

    state, written = append_records(app.events, name, make)
    said = "paused" if written else "was already paused"
    if as_json:
        click.echo(json.dumps({"name": name, "phase": state.phase.value}))
    else:
        click.echo(f"backfill {name} {said}")


@backfill.command("resume")
@click.argument("name")
@click.option("--detach", is_flag=True, help="Local: record the resume and return.")
@click.option("--wait", is_flag=True, help="Cluster: follow it until it finishes.")
@json_flag
@pass_app
def resume_cmd(app: App, name: str, detach: bool, wait: bool, as_json: bool) -> None:
    """Continue a paused backfill — or, embedded, one whose process was killed."""
    by = default_requester()

    def make(state: BackfillState) -> list[object] | None:
        if not state.exists:
            raise BackfillError("backfill_not_found", f"no backfill named {name!r}")
        return [Resumed(by=by)] if state.paused and state.finished is None else None

    append_records(app.events, name, make)
    _continue(app, name, False, detach, wait, as_json)


@backfill.command("cancel")
@click.argument("name")
@click.option("--reason", default="backfill cancelled by user", show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, None), default=600.0)
@json_flag
@pass_app
def cancel_cmd(
    app: App, name: str, reason: str, wait: bool, timeout_s: float, as_json: bool
) -> None:
    """Start no new runs and cancel the active ones; ends once every run is terminal."""
    from mfm_dist.engine.cancellation import make_request

    by = default_requester()
    make_request(reason, by)  # the same checks as a run's cancel request

    def make(state: BackfillState) -> list[object] | None:
        if not state.exists:
            raise BackfillError("backfill_not_found", f"no backfill named {name!r}")
        _refuse_finished(state, "cancel")
        return None if state.cancel is not None else [CancelRequested(by=by, reason=reason)]

    state, _ = append_records(app.events, name, make)
    assert state.issue is not None
    started = time.monotonic()
    if state.issue.backend == "cluster":
        _wake_cluster(app, name)
    else:
        try:
            with _backfill_lock(app, name):
                _cancel_here(app, name)
        except CliError as exc:
            if exc.code != "backfill_driven_elsewhere":
                raise  # else: its live driver cancels the runs
    if wait:
        deadline = started + timeout_s
        while load_state(app.events, name).finished is None:
            if time.monotonic() > deadline:
                raise CliError(
                    "backfill_wait_timeout",
                    f"backfill {name}: cancel recorded, but runs were still active after "
                    f"{timeout_s:g} s; follow it with `{_command(app, 'status', name)}`",
                    ExitCode.INFRASTRUCTURE,
                )
            time.sleep(LOCAL_POLL_S)
    elapsed = time.monotonic() - started
    state = load_state(app.events, name)
    if as_json:
        body = {"name": name, "phase": state.phase.value, "seconds": round(elapsed, 3)}
        click.echo(json.dumps(body))
    else:
        click.echo(f"backfill {name}: {state.phase.value} ({elapsed:.2f} s)")


def _cancel_here(app: App, name: str) -> None:
    """Embedded, with no live driver: cancel the runs and end the backfill here."""
    state = require_state(app.events, name)
    assert state.issue is not None
    pool = LocalPool(app.events, app.artifacts, app.registry(), workers=state.issue.max_active,
                     lock_run=_run_lock(app))  # fmt: skip
    driver = BackfillDriver(
        app.events, app.artifacts, name, pool,
        LocalCanceller(app.events, name, default_requester()), poll_s=LOCAL_POLL_S,
    )  # fmt: skip
    try:
        while driver.step().status != "finished":
            time.sleep(LOCAL_POLL_S)
    finally:
        pool.wait()
        pool.shutdown()


@backfill.command("retry")
@click.argument("name")
@click.option("--failed", "failed", is_flag=True, required=True, help="Retry failed partitions.")
@click.option("--detach", is_flag=True, help="Local: record the retry and return.")
@click.option("--wait", is_flag=True, help="Cluster: follow it until it finishes.")
@json_flag
@pass_app
def retry_cmd(app: App, name: str, failed: bool, detach: bool, wait: bool, as_json: bool) -> None:
    """New runs (a new key generation) for the failed partitions of NAME."""
    result = retry_failed(app.events, app.artifacts, app.registry(), name)
    _announce(result, as_json)
    _continue(app, name, False, detach, wait, as_json)
