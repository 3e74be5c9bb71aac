"""`mfm cancel`: record a run's cancel request and see the run end (docs/cancellation.md).

The request goes into the run's own log first; whoever drives the run then stops it. On
the embedded backend that is the process running it (it notices within a fraction of a
second); a run whose driver is gone (an interrupted `mfm run`) is closed here, at once.
With `--cluster` the run's coordinator is woken and ends it.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import dataclass

import click

from mfm_dist.backfill.planner import load_state
from mfm_dist.cli.app import App, cli, json_flag, pass_app
from mfm_dist.cli.drivers import DrivenElsewhere, DriverLock
from mfm_dist.cli.errors import CliError, ExitCode
from mfm_dist.cli.inspection import run_query
from mfm_dist.cli.running import on_cluster, timeout_option
from mfm_dist.engine.cancellation import CancelOutcome, request_cancel
from mfm_dist.engine.local import LocalEngine
from mfm_dist.events import RunCompleted
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase

WAIT_POLL_S = 0.1


def default_requester() -> str:
    """`user@host`: who asked, as recorded in the request."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass
class _Cancelled:
    outcome: CancelOutcome
    phase: str | None  # the run's phase when we stopped looking (None: still running)


@cli.command()
@click.argument("run_ids", metavar="[RUN]...", nargs=-1)
@click.option("--op", metavar="OP", help="Also every running run of this operation.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Also every running run with this label (repeatable: all of them).",
)
@click.option("--backfill", metavar="NAME", help="Also every running run of this backfill.")
@click.option("--reason", default="cancelled by user", show_default=True, help="Why (recorded).")
@click.option(
    "--cluster", is_flag=True, help="The runs are on the Celery cluster: wake their coordinators."
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until each run has ended Cancelled.",
)
@timeout_option("Stop waiting after this many seconds (exit 3).")
@json_flag
@pass_app
def cancel(
    app: App,
    run_ids: tuple[str, ...],
    op: str | None,
    labels: tuple[str, ...],
    backfill: str | None,
    reason: str,
    cluster: bool,
    wait: bool,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Cancel RUN... (ids or unique prefixes), and every running run the filters select:
    nothing new starts, running attempts are stopped, the run ends Cancelled. Idempotent; a
    named run that already finished is left as it is (exit 1)."""
    ids = _selected(app, run_ids, op, labels, backfill)
    if not ids:
        click.echo("[]" if as_json else "no running run matches", err=not as_json)
        return
    requester = default_requester()
    if cluster:
        with on_cluster(app) as rt:
            from workers.cancel import cancel_run

            outcomes = [cancel_run(rt, str(rid), reason, requester) for rid in ids]
    else:
        outcomes = [request_cancel(app.events, rid, reason, requester) for rid in ids]
        for outcome in outcomes:
            if outcome.status != "finished":
                _close_if_undriven(app, RunId(outcome.run_id))
    if backfill is not None:
        _warn_if_backfill_active(app, backfill)
    deadline = time.monotonic() + timeout_s if wait else 0.0
    results = [_Cancelled(o, _phase_when_ended(app, o, deadline)) for o in outcomes]
    _report(results, as_json)
    if any(r.outcome.status == "finished" for r in results):
        finished = [r.outcome.run_id for r in results if r.outcome.status == "finished"]
        raise CliError(
            "run_already_finished",
            f"{len(finished)} run(s) had already finished and were left as they are: "
            + ", ".join(finished),
            ExitCode.FAILED,
        )
    if wait and any(r.phase is None for r in results):
        raise CliError(
            "run_wait_timeout",
            f"the cancel is recorded, but a run had not ended after {timeout_s:g} s; "
            "follow it with `mfm status`",
            ExitCode.INFRASTRUCTURE,
        )


def _selected(
    app: App,
    run_ids: tuple[str, ...],
    op: str | None,
    labels: tuple[str, ...],
    backfill: str | None,
) -> list[RunId]:
    """The named runs, then the running runs the filters select (each once, in order)."""
    ids = [app.run_id(text) for text in run_ids]
    filtered = op is not None or bool(labels) or backfill is not None
    if not ids and not filtered:
        raise CliError("usage", "name a RUN, or select runs with --op, --label or --backfill")
    if filtered:
        query = run_query(
            op=op,
            phase=RunPhase.RUNNING.value,
            labels=labels,
            backfill=backfill,
            since=None,
            until=None,
            now_ms=int(time.time() * 1000),
        )
        ids.extend(s.run_id for s in app.events.list_runs(query=query))
    return list(dict.fromkeys(ids))


def _warn_if_backfill_active(app: App, name: str) -> None:
    """`--backfill` selects the backfill's *runs*; the backfill itself goes on starting runs
    for its remaining partitions unless it is cancelled too (docs/backfills.md)."""
    state = load_state(app.events, name)
    if state.exists and state.cancel is None and state.finished is None:
        click.echo(
            f"note: backfill {name} is still active and starts runs for its remaining "
            f"partitions; stop it with: mfm backfill cancel {name}",
            err=True,
        )


def _close_if_undriven(app: App, rid: RunId) -> None:
    """A run nobody is driving (its `mfm run` was interrupted) is ended here: resume sees
    the request, closes what was open with `run_cancelled` and ends it Cancelled."""
    try:
        lock = DriverLock.acquire(app.events, str(rid))
    except DrivenElsewhere:
        return  # its live driver notices the request by itself
    if lock is None:
        return  # no local driver records (e.g. a shared store): the driver must notice
    try:
        LocalEngine(app.events, app.artifacts, app.registry()).resume(rid)
    finally:
        lock.release(finished=True)


def _phase_when_ended(app: App, outcome: CancelOutcome, deadline: float) -> str | None:
    """The run's final phase, polling its log until `deadline` (monotonic)."""
    rid = RunId(outcome.run_id)
    while True:
        head = app.events.head_seq(rid)
        last = app.events.read_range(rid, head, head)
        if last and isinstance(last[0].event, RunCompleted):
            return last[0].event.status.value
        if time.monotonic() >= deadline:
            return None
        time.sleep(WAIT_POLL_S)


_SAID = {
    "requested": "cancel requested",
    "already_requested": "cancel was already requested",
    "finished": "already finished; left as it is",
}


def _report(results: list[_Cancelled], as_json: bool) -> None:
    if as_json:
        rows = [
            {
                "run_id": r.outcome.run_id,
                "request": r.outcome.status,
                "request_seq": r.outcome.seq,
                "phase": r.phase or "Running",
            }
            for r in results
        ]
        click.echo(json.dumps(rows, sort_keys=True))
        return
    for r in results:
        ended = f" — {r.phase}" if r.phase else " — still running"
        click.echo(f"{r.outcome.run_id}: {_SAID[r.outcome.status]}{ended}")
