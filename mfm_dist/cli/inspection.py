"""Read-only commands: `status`, `runs`, `events`, `artifact`, `context`, `ops`, `graph`,
`verify` and `replay`. They open the embedded stores read-only (`pass_reader`): they work
on an archived, read-only home and never create a store where they run."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import click

from mfm_dist.cli.app import App, cli, input_option, json_flag, pass_reader
from mfm_dist.cli.drivers import DriverStatus, driver_status
from mfm_dist.cli.errors import CliError, ExitCode
from mfm_dist.cli.graph import FORMATS, render_plan
from mfm_dist.cli.options import parse_input, parse_labels, parse_time
from mfm_dist.cli.output import (
    pretty_json,
    render_events,
    render_ops,
    render_report,
    render_runs,
    stdout_console,
)
from mfm_dist.config import RunConfig
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import load_run, prepare_run
from mfm_dist.engine.snapshots import SnapshotStore, read_artifact
from mfm_dist.errors import InvalidInput, MfmError, NotFound
from mfm_dist.ids import RunId, StateId
from mfm_dist.reports import LeaseView, RunReport, run_report
from mfm_dist.results import RunPhase, RunQuery, RunSummary
from mfm_dist.secrets import contains_secret, is_secret_string

# -- inspection -----------------------------------------------------------------------------------


def _leases(app: App, history: RunHistory) -> Mapping[str, LeaseView] | None:
    """Live attempt leases of a run on the distributed backend (None elsewhere)."""
    cluster = app.cluster()
    if cluster is None:
        return None
    open_ids = [state_id for state_id, _ in history.open_attempts()]
    return cluster.leases(str(history.run_id), open_ids)


def _report_for(app: App, rid: RunId) -> RunReport:
    """With the re-derived plan when possible (pending states, skips); else history only."""
    try:
        loaded = load_run(app.events, app.artifacts, app.registry(), rid)
    except NotFound as exc:
        if exc.code == "run_not_found":
            raise
        loaded = None
        reason = exc.code
    except MfmError as exc:
        loaded = None
        reason = exc.code
    if loaded is not None:
        leases = _leases(app, loaded.history)
        return run_report(
            loaded.history,
            loaded.plan,
            loaded.manifest.run_config,
            leases,
            snapshots=SnapshotStore(app.artifacts),
        )
    history = RunHistory.load(app.events, rid)
    click.echo(
        f"warning: plan unavailable ({reason}); showing states from the history only", err=True
    )
    return run_report(history)


@cli.command()
@click.argument("run_id", metavar="RUN")
@json_flag
@pass_reader
def status(app: App, run_id: str, as_json: bool) -> None:
    """Phase of RUN and, per state, status, attempts, snapshot and last error; for a running
    embedded run, whether the process driving it is alive (or it was interrupted)."""
    result = _report_for(app, app.run_id(run_id))
    driver = _driver_of(app, result.run_id, result.phase)
    if as_json:
        click.echo(_json_with_driver(result.model_dump(mode="json"), driver))
    else:
        render_report(stdout_console(), result, driver)


def _driver_of(app: App, run_id: str, phase: RunPhase) -> DriverStatus | None:
    """The driver record of a running embedded run (None for finished runs and elsewhere)."""
    return driver_status(app.events, run_id) if phase == RunPhase.RUNNING else None


def _json_with_driver(row: dict[str, Any], driver: DriverStatus | None) -> str:
    """`row` plus `interrupted` (its driver is gone: resume it) and `driver` (or null)."""
    row["interrupted"] = driver is not None and driver.interrupted
    row["driver"] = driver.to_json() if driver is not None else None
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


BACKFILL_LABEL = "backfill"
"""The label every run of a backfill carries (`backfill=<name>`): what `--backfill` filters."""


def run_query(
    *,
    op: str | None,
    phase: str | None,
    labels: tuple[str, ...],
    backfill: str | None,
    since: str | None,
    until: str | None,
    now_ms: int,
) -> RunQuery:
    """The `mfm runs` filters as a store query (every condition must hold)."""
    wanted = parse_labels(labels)
    if backfill is not None:
        if wanted.get(BACKFILL_LABEL, backfill) != backfill:
            raise InvalidInput(
                "label_invalid", "--backfill NAME is the label backfill=NAME, given otherwise too"
            )
        wanted = parse_labels(
            [f"{k}={v}" for k, v in {**wanted, BACKFILL_LABEL: backfill}.items()], "--backfill"
        )
    since_ms = parse_time(since, now_ms, "--since") if since is not None else None
    until_ms = parse_time(until, now_ms, "--until") if until is not None else None
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise InvalidInput("time_invalid", "--since must be before --until")
    return RunQuery(
        op_id=op,
        phase=RunPhase(phase) if phase is not None else None,
        labels=wanted,
        since_ms=since_ms,
        until_ms=until_ms,
    )


def _run_row(summary: RunSummary, driver: DriverStatus | None) -> str:
    row = summary.model_dump(mode="json")
    row["duration_ms"] = summary.duration_ms
    return _json_with_driver(row, driver)


@cli.command()
@click.option("--op", metavar="OP", help="Only runs of this operation (or pipeline).")
@click.option(
    "--phase",
    type=click.Choice([p.value for p in RunPhase], case_sensitive=False),
    help="Only runs in this phase.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only runs with this label (repeatable: all of them).",
)
@click.option(
    "--backfill", metavar="NAME", help="Only runs of this backfill (the label backfill=NAME)."
)
@click.option(
    "--since", metavar="TIME", help="Started at or after TIME (2026-01-31, …T12:00Z, 2h, 3d)."
)
@click.option("--until", metavar="TIME", help="Started before TIME (same forms as --since).")
@click.option(
    "--limit",
    type=click.IntRange(0, None),
    default=20,
    show_default=True,
    help="At most this many runs (0: all).",
)
@json_flag
@pass_reader
def runs(
    app: App,
    op: str | None,
    phase: str | None,
    labels: tuple[str, ...],
    backfill: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Runs in the event store, newest first, with their duration and labels; the filters
    combine (every one must hold)."""
    now_ms = int(time.time() * 1000)
    query = run_query(
        op=op,
        phase=phase,
        labels=labels,
        backfill=backfill,
        since=since,
        until=until,
        now_ms=now_ms,
    )
    summaries = app.events.list_runs(limit=limit or None, query=query)
    drivers = {
        str(s.run_id): d
        for s in summaries
        if (d := _driver_of(app, str(s.run_id), s.phase)) is not None
    }
    if as_json:
        rows = [_run_row(s, drivers.get(str(s.run_id))) for s in summaries]
        click.echo("[" + ",".join(rows) + "]")
    else:
        where = app.events_location()
        if app.events.missing:
            where += " (no event store there yet)"
        render_runs(
            stdout_console(),
            summaries,
            where,
            drivers,
            now_ms=now_ms,
            filtered=not query.is_empty,
        )


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--json", "as_json", is_flag=True, help="One persisted envelope (canonical JSON) per line."
)
@pass_reader
def events(app: App, run_id: str, as_json: bool) -> None:
    """The event stream of RUN."""
    rid = app.run_id(run_id)
    envelopes = app.events.read_range(rid, 1, None)
    if not envelopes:
        raise NotFound(f"run {rid} not found", code="run_not_found")
    if as_json:
        out = _binary_stdout()
        for env in envelopes:
            out.write(env.to_bytes() + b"\n")
        out.flush()
    else:
        render_events(stdout_console(), envelopes)


def _binary_stdout() -> BinaryIO:
    sys.stdout.flush()
    return sys.stdout.buffer


def _refuse_secret_bytes(data: bytes) -> None:
    """Secret payloads are stored but never shown (docs/secrets.md)."""
    text = data.decode("utf-8", errors="replace")
    if is_secret_string(text):
        raise CliError("secret_output_refused", "artifact content is secret-shaped; not shown")


@cli.command()
@click.argument("artifact_id", metavar="ID")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to FILE."
)
@pass_reader
def artifact(app: App, artifact_id: str, output: str | None) -> None:
    """The raw, hash-verified bytes of artifact ID (or of the one artifact whose id starts
    with ID: at least 8 characters, such as the snapshot ids `mfm status` prints)."""
    where = app.artifacts.url or "the artifact store"
    try:
        data = read_artifact(app.artifacts, app.artifact_id(artifact_id))
    except NotFound as exc:
        if exc.code != "artifact_not_found":
            raise
        raise CliError("artifact_not_found", f"no artifact {artifact_id} in {where}") from None
    _refuse_secret_bytes(data)
    if output is None:
        out = _binary_stdout()
        out.write(data)
        out.flush()
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        raise CliError(
            "output_write_failed",
            f"cannot write the output file ({type(exc).__name__})",
            ExitCode.INFRASTRUCTURE,
        ) from None


def _resolve_state(history: RunHistory, given: str) -> str:
    """A full state id, or a unique suffix of one (`item_0003`, `main.item_0003`)."""
    if given in history.states:
        return given
    matches = [s for s in history.states if s.endswith("." + given)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise CliError("state_ambiguous", f"{given} matches {len(matches)} states; give more of it")
    if not StateId._check(given):
        raise CliError("state_not_found", f"run {history.run_id} has no state matching {given}")
    return given


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--state",
    "state_id",
    metavar="STATE_ID",
    help="That state's completed snapshot (full id or a unique suffix, e.g. item_0003).",
)
@pass_reader
def context(app: App, run_id: str, state_id: str | None) -> None:
    """The final context snapshot of RUN (or of one state) as JSON."""
    history = RunHistory.load(app.events, app.run_id(run_id))
    if state_id is not None:
        sid = _resolve_state(history, state_id)
        record = history.states.get(sid)
        if record is None:
            raise CliError("state_not_found", f"run {history.run_id} has no attempt of {sid}")
        snapshot_id = record.snapshot_id
        if snapshot_id is None:
            raise CliError(
                "state_not_completed", f"{sid} has not completed in run {history.run_id}"
            )
    else:
        if history.completed is None or history.completed.final_snapshot_id is None:
            raise CliError(
                "run_not_finished",
                f"run {history.run_id} has no final snapshot yet; use --state STATE_ID",
            )
        snapshot_id = str(history.completed.final_snapshot_id)
    content = SnapshotStore(app.artifacts).load(snapshot_id)
    if contains_secret(content):
        raise CliError("secret_output_refused", "snapshot content is secret-shaped; not shown")
    click.echo(pretty_json(content))


@cli.command()
@json_flag
@pass_reader
def ops(app: App, as_json: bool) -> None:
    """Registered operations (with versions) and pipelines."""
    registry = app.registry()
    operations = sorted(registry.operations(), key=lambda o: (o.op_id, o.op_version))
    pipelines = sorted(registry.pipelines(), key=lambda p: str(p.machine_id))
    if as_json:
        payload = {
            "operations": [
                {"op_id": o.op_id, "op_version": o.op_version, "description": o.description}
                for o in operations
            ],
            "pipelines": [p.model_dump(mode="json") for p in pipelines],
        }
        click.echo(pretty_json(payload))
    else:
        render_ops(stdout_console(), operations, pipelines)


@cli.command()
@click.argument("op")
@click.option("--version", "op_version", help="Op version (default: the newest).")
@input_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@pass_reader
def graph(app: App, op: str, op_version: str | None, raw_input: str | None, fmt: str) -> None:
    """The flattened plan of OP: states in canonical order, tags and edges."""
    run_input = parse_input(raw_input)
    prepared = prepare_run(app.registry(), op, run_input, RunConfig(), version=op_version)
    click.echo(render_plan(prepared.plan, fmt), nl=False)


@cli.command()
@click.argument("run_id", metavar="RUN")
@json_flag
@pass_reader
def verify(app: App, run_id: str, as_json: bool) -> None:
    """Re-check RUN's history, hashes and snapshots; exit 1 unless it verifies."""
    from mfm_dist.verify import verify_run

    rid = app.run_id(run_id)
    result = verify_run(app.events, app.artifacts, app.registry(), rid)
    if any(v.code == "run_not_found" for v in result.violations):
        raise NotFound(f"run {rid} not found", code="run_not_found")
    if as_json:
        click.echo(result.model_dump_json())
    elif result.ok:
        counts = result.checked
        click.echo(
            f"verified: run {result.run_id} ({counts.get('events', 0)} events, "
            f"{counts.get('artifacts', 0)} artifacts)"
        )
    else:
        click.echo(f"NOT VERIFIED: run {result.run_id} ({len(result.violations)} violations)")
        for v in result.violations:
            where = []
            if v.seq is not None:
                where.append(f"seq {v.seq}")
            if v.state_id is not None:
                where.append(f"state {v.state_id}")
            suffix = f" [{', '.join(where)}]" if where else ""
            click.echo(f"  {v.code}: {v.message}{suffix}")
    if not result.ok:
        raise click.exceptions.Exit(ExitCode.FAILED)


@cli.command()
@click.argument("run_id", metavar="RUN")
@json_flag
@pass_reader
def replay(app: App, run_id: str, as_json: bool) -> None:
    """Re-execute RUN against its recorded facts (no network, nothing written) and compare
    every state's snapshot; exit 1 on the first divergence."""
    from mfm_dist.replay_check import replay_run

    result = replay_run(app.events, app.artifacts, app.registry(), app.run_id(run_id))
    if as_json:
        click.echo(result.model_dump_json())
    else:
        for state in result.states:
            mark = "match" if state.match else "DIVERGED"
            click.echo(f"  {mark:8} {state.state_id} (attempt {state.attempt})")
        for state_id in result.not_replayed:
            click.echo(f"  {'skipped':8} {state_id} (its last attempt did not complete)")
        first = result.first_divergence
        if first is None:
            click.echo(f"replay matches: run {result.run_id} ({len(result.states)} states)")
        else:
            detail = []
            if first.first_differing_key is not None:
                detail.append(f"first differing key {first.first_differing_key!r}")
            if first.missing_fact_key is not None:
                detail.append(f"missing fact {first.missing_fact_key!r}")
            if first.error_code is not None:
                detail.append(f"error {first.error_code}")
            click.echo(
                f"REPLAY DIVERGED: run {result.run_id} at state {first.state_id}"
                + (f": {', '.join(detail)}" if detail else "")
            )
    if not result.ok:
        raise click.exceptions.Exit(ExitCode.FAILED)
