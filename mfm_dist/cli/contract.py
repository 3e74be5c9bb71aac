"""Commands around the submission contract: `schema`, `submissions` and `wait`."""

from __future__ import annotations

import json

import click

from mfm_dist.cli.app import App, cli, json_flag, pass_app
from mfm_dist.cli.errors import CliError, ExitCode
from mfm_dist.cli.output import result_lines
from mfm_dist.engine.lifecycle import explained_from_history, load_run
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import MfmError
from mfm_dist.ids import RunId
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.submission import submit_schema
from mfm_dist.waiting import wait_for_result


@cli.command()
@click.argument("name", type=click.Choice(["submit"]))
def schema(name: str) -> None:
    """Print the JSON Schema of a message contract (`submit`: mfm.submit, version 1)."""
    click.echo(json.dumps(submit_schema(), indent=2, sort_keys=True))


@cli.command()
@click.option("--rejected", is_flag=True, help="List the recent rejections (code and time).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_flag
@pass_app
def submissions(app: App, rejected: bool, limit: int, as_json: bool) -> None:
    """Submissions the cluster accepted and refused (counts by outcome and code). Payloads
    are never kept: a rejection is its code, its time and its delivery id."""
    cluster = app.cluster()
    if cluster is None:
        raise CliError(
            "distributed_unavailable",
            "submission statistics live in the cluster's Redis: point --events-url at it",
            ExitCode.INFRASTRUCTURE,
        )
    counts = cluster.submission_counts()
    rows = cluster.recent_rejections(limit) if rejected else []
    if as_json:
        payload = {"counts": counts, "rejected": [r.model_dump(mode="json") for r in rows]}
        click.echo(json.dumps(payload, sort_keys=True))
        return
    for key in sorted(counts):
        click.echo(f"{key:<40} {counts[key]}")
    if rejected:
        from datetime import UTC, datetime

        click.echo(f"recent rejections ({len(rows)}):")
        for row in rows:
            when = datetime.fromtimestamp(row.ts_ms / 1000, tz=UTC).isoformat(timespec="seconds")
            click.echo(f"  {when}  {row.code:<36} {row.delivery_id or '-'}")


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--timeout", "timeout_s", type=float, default=3600.0, show_default=True, help="Seconds."
)
@json_flag
@pass_app
def wait(app: App, run_id: str, timeout_s: float, as_json: bool) -> None:
    """Wait until RUN has finished (any backend); print its result. Exit 0 completed,
    1 failed or cancelled, 3 on timeout."""
    rid = app.run_id(run_id)
    result = wait_for_result(app.events, rid, timeout_s)
    if result.phase == RunPhase.FAILED and result.error is None:
        result = _explained(app, rid, result)
    if as_json:
        click.echo(result.model_dump_json())
    else:
        for line in result_lines(result, None):
            click.echo(line)
    if result.phase != RunPhase.COMPLETED:
        raise click.exceptions.Exit(ExitCode.FAILED)


def _explained(app: App, rid: RunId, result: RunResult) -> RunResult:
    """A failure the history does not name (a `Minimal`-profile merge conflict), explained
    from the recorded deltas; as it was when the run cannot be loaded here."""
    try:
        loaded = load_run(app.events, app.artifacts, app.registry(), rid)
    except MfmError:
        return result
    return explained_from_history(
        result,
        loaded.history,
        loaded.plan,
        loaded.manifest.run_config,
        SnapshotStore(app.artifacts),
    )
