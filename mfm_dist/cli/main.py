"""The `mfm` command line: run, resume and inspect runs on any configured backend.

The CLI is thin: it parses options, calls the library (`prepare_run`,
`LocalEngine`, `run_report`, `verify_run`, the stores) and renders results.
Every error ends as one `error[<code>]: <message>` line on stderr and a stable
exit code (see `mfm_dist.cli.errors`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click
from pydantic import ValidationError

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.cli.errors import CliError, ExitCode, report
from mfm_dist.cli.graph import FORMATS, render_plan
from mfm_dist.cli.options import PROFILES, build_run_config, parse_input
from mfm_dist.cli.output import (
    pretty_json,
    render_events,
    render_ops,
    render_report,
    render_runs,
    result_lines,
    stderr_console,
    stdout_console,
)
from mfm_dist.cli.progress import LiveProgress, ProgressTracker
from mfm_dist.config import RunConfig
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import load_run, prepare_run, result_from_history, store_manifest
from mfm_dist.engine.local import LocalEngine
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import InvalidInput, MfmError, NotFound
from mfm_dist.ids import ArtifactId, RunId, StateId
from mfm_dist.inspect import RunReport, StateStatus, run_report
from mfm_dist.operations import OperationRegistry
from mfm_dist.plan import ExecutionPlan
from mfm_dist.run import RunPhase, RunResult
from mfm_dist.secrets import contains_secret, is_secret_string, redact_url
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.urls import Stores, default_urls, open_stores

MAX_ATTEMPTS_LIMIT = 2**32 - 1
MAX_FAN_OUT = 1_000_000


@dataclass
class App:
    """Global options, and the stores and registry they select (opened on first use)."""

    home: str | None = None
    events_url: str | None = None
    artifacts_url: str | None = None
    ops_modules: tuple[str, ...] = ()
    debug: bool = False
    _stores: Stores | None = field(default=None, repr=False)
    _registry: OperationRegistry | None = field(default=None, repr=False)

    def registry(self) -> OperationRegistry:
        if self._registry is None:
            self._registry = OperationRegistry.default(extra_modules=self.ops_modules)
        return self._registry

    def stores(self) -> Stores:
        if self._stores is None:
            self._stores = open_stores(self.events_url, self.artifacts_url, self.home)
        return self._stores

    @property
    def events(self) -> EventStore:
        return self.stores().events

    @property
    def artifacts(self) -> ArtifactStore:
        return self.stores().artifacts

    def events_location(self) -> str:
        """The event store URL in force, safe to print."""
        default_events, _ = default_urls(self.home)
        return redact_url(self.events_url or default_events)

    def close(self) -> None:
        if self._stores is not None:
            stores, self._stores = self._stores, None
            stores.close()


class MfmGroup(click.Group):
    """Runs commands in non-standalone mode so every failure goes through `report`."""

    debug = False

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "mfm")
        MfmGroup.debug = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except Exception as exc:  # every failure becomes one line and an exit code
            sys.exit(int(report(exc, sys.stderr, debug=MfmGroup.debug)))
        except KeyboardInterrupt as exc:
            sys.exit(int(report(exc, sys.stderr, debug=MfmGroup.debug)))
        sys.exit(rv if isinstance(rv, int) else ExitCode.OK)


@click.group(cls=MfmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="MFM_HOME",
    type=click.Path(file_okay=False),
    help="Embedded store root (default ./.mfm).",
)
@click.option(
    "--events-url", envvar="MFM_EVENTS_URL", help="Event store URL (sqlite://, redis://…)."
)
@click.option(
    "--artifacts-url", envvar="MFM_ARTIFACTS_URL", help="Artifact store URL (file://, s3://…)."
)
@click.option(
    "--ops",
    "ops_modules",
    multiple=True,
    metavar="MODULE",
    help="Extra operations module (repeatable), besides entry points and MFM_OPERATIONS.",
)
@click.option("--debug", is_flag=True, envvar="MFM_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def cli(
    ctx: click.Context,
    home: str | None,
    events_url: str | None,
    artifacts_url: str | None,
    ops_modules: tuple[str, ...],
    debug: bool,
) -> None:
    """mfm: reproducible, auditable workflow runs."""
    MfmGroup.debug = debug
    if os.getcwd() not in sys.path:  # --ops / MFM_OPERATIONS modules in the working directory
        sys.path.append(os.getcwd())
    app = App(home, events_url or None, artifacts_url or None, ops_modules, debug)
    ctx.obj = app
    ctx.call_on_close(app.close)


pass_app = click.make_pass_decorator(App)


json_flag = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
input_option = click.option(
    "--input", "raw_input", metavar="JSON|@FILE", help="Run input as JSON, or @FILE to read one."
)


# -- run / resume ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(show: bool, label: str, tracker: ProgressTracker) -> Iterator[None]:
    if not show:
        yield
        return
    with LiveProgress(stderr_console(), label, tracker):
        yield


def _wants_progress(as_json: bool) -> bool:
    return not as_json and stderr_console().is_terminal


def _finish(
    app: App,
    result: RunResult,
    as_json: bool,
    plan: ExecutionPlan,
    run_config: RunConfig,
) -> None:
    """Print the result and exit 0 (completed) or 1 (failed)."""
    if as_json:
        click.echo(result.model_dump_json())
    else:
        skipped: list[str] | None = None
        if run_config.skip_tags:
            history = RunHistory.load(app.events, result.run_id)
            states = run_report(history, plan, run_config).states
            skipped = [s.state_id for s in states if s.status == StateStatus.SKIPPED]
        for line in result_lines(result, skipped):
            click.echo(line)
    if result.phase != RunPhase.COMPLETED:
        raise click.exceptions.Exit(ExitCode.FAILED)


FC = TypeVar("FC", bound=Callable[..., Any])


@dataclass(frozen=True)
class RunSpec:
    """What to run, from the shared run options."""

    op: str
    version: str | None
    run_input: Any
    run_config: RunConfig


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that describe a run (shared by `run` and `submit`), given to the command
    as one `spec: RunSpec`."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        op: str,
        op_version: str | None,
        raw_input: str | None,
        fan_out: int | None,
        skip_tags: tuple[str, ...],
        dry_run: bool,
        profile: str,
        max_attempts: int,
        backoff_ms: int,
        replay: bool,
        **kwargs: Any,
    ) -> Any:
        spec = RunSpec(
            op=op,
            version=op_version,
            run_input=parse_input(raw_input),
            run_config=_run_config(
                fan_out=fan_out,
                skip_tags=skip_tags,
                dry_run=dry_run,
                profile=profile,
                max_attempts=max_attempts,
                backoff_ms=backoff_ms,
                replay=replay,
            ),
        )
        return fn(*args, spec=spec, **kwargs)

    options = [
        click.argument("op"),
        click.option("--version", "op_version", help="Op version (default: the newest)."),
        input_option,
        click.option(
            "--fan-out",
            type=click.IntRange(1, MAX_FAN_OUT),
            metavar="N",
            help="Run independent states in parallel, at most N at once.",
        ),
        click.option(
            "--skip-tag", "skip_tags", multiple=True, metavar="TAG", help="Skip states with TAG."
        ),
        click.option("--dry-run", is_flag=True, help="Skip states tagged apply_side_effect."),
        click.option(
            "--profile", type=click.Choice(sorted(PROFILES)), default="normal", show_default=True
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(0, MAX_ATTEMPTS_LIMIT),
            default=1,
            show_default=True,
        ),
        click.option("--backoff-ms", type=click.IntRange(0, None), default=0, show_default=True),
        click.option(
            "--replay", is_flag=True, help="Replay recorded facts instead of doing live IO."
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def timeout_option(help_text: str) -> Callable[[FC], FC]:
    return click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(0, None),
        default=3600.0,
        show_default=True,
        help=help_text,
    )


def _run_config(**options: Any) -> RunConfig:
    try:
        return build_run_config(**options)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
        raise InvalidInput("run_config_invalid", f"invalid run configuration: {fields}") from None


@cli.command()
@run_options
@click.option(
    "--backend",
    type=click.Choice(["local", "celery"]),
    default="local",
    envvar="MFM_BACKEND",
    show_default=True,
    help="local: execute here; celery: submit to the cluster and follow the run.",
)
@click.option("--detach", is_flag=True, help="With --backend celery: print the run id and return.")
@timeout_option("With --backend celery: stop following after this many seconds (exit 3).")
@json_flag
@pass_app
def run(
    app: App, spec: RunSpec, backend: str, detach: bool, timeout_s: float, as_json: bool
) -> None:
    """Start a run of OP (an operation or a registered pipeline): here, or on the cluster."""
    if backend == "celery":
        _run_on_cluster(app, spec, detach, timeout_s, as_json)
        return
    registry = app.registry()
    op, op_version, run_input, run_config = spec.op, spec.version, spec.run_input, spec.run_config
    prepared = prepare_run(registry, op, run_input, run_config, version=op_version)
    manifest_id = store_manifest(app.artifacts, prepared.manifest)
    show = _wants_progress(as_json)
    tracker = ProgressTracker(total=len(prepared.plan.compiled))
    engine = LocalEngine(app.events, app.artifacts, registry, listener=tracker if show else None)
    with _progress(show, str(prepared.plan.op_id), tracker):
        result = engine.start(
            plan=prepared.plan,
            run_config=prepared.run_config,
            manifest=prepared.manifest,
            manifest_id=manifest_id,
            initial_context=prepared.initial_context,
        )
    _finish(app, result, as_json, prepared.plan, prepared.run_config)


def _run_on_cluster(app: App, spec: RunSpec, detach: bool, timeout_s: float, as_json: bool) -> None:
    """Submit to the cluster; then either return the run id or follow the run live."""
    _export_store_urls(app)
    try:
        from workers.submit import submit_run
    except ImportError as exc:
        raise _distributed_unavailable(exc) from None
    prepared = prepare_run(
        app.registry(), spec.op, spec.run_input, spec.run_config, version=spec.version
    )
    with _broker_errors():
        run_id = submit_run(spec.op, spec.run_input, spec.run_config, version=spec.version)
    if detach:
        click.echo(json.dumps({"run_id": str(run_id)}) if as_json else f"submitted run {run_id}")
        return
    show = _wants_progress(as_json)
    tracker = ProgressTracker(total=len(prepared.plan.compiled))
    history = _follow(app, run_id, tracker, show, str(prepared.plan.op_id), timeout_s)
    result = result_from_history(history, prepared.plan.compiled.position)
    _finish(app, result, as_json, prepared.plan, prepared.run_config)


def _follow(
    app: App, run_id: RunId, tracker: ProgressTracker, show: bool, label: str, timeout_s: float
) -> RunHistory:
    """Tail the run's event log (feeding the progress display) until `RunCompleted`."""
    from mfm_dist.errors import RunError

    deadline = time.monotonic() + timeout_s
    history = RunHistory.load(app.events, run_id)
    for env in history.envelopes:
        tracker(env)
    with _progress(show, label, tracker):
        while history.completed is None:
            if time.monotonic() > deadline:
                raise RunError(
                    "run_wait_timeout",
                    f"run {run_id} did not finish within {timeout_s:g}s (it continues on the "
                    "cluster; follow it with `mfm status`)",
                )
            time.sleep(0.1)
            for env in history.refresh(app.events):
                tracker(env)
    return history


@cli.command()
@click.option(
    "--queues",
    type=click.Choice(["control", "attempts", "all"]),
    default="all",
    show_default=True,
    help="control: coordination (run one, -c 1); attempts: state attempts (scale these).",
)
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), help="Worker processes.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, concurrency: int | None, loglevel: str) -> None:
    """Start a Celery worker configured for mfm-dist (settings from MFM_* variables)."""
    try:
        from workers.app import app as celery_app
        from workers.settings import Settings
    except ImportError as exc:
        raise _distributed_unavailable(exc) from None
    settings = Settings.from_env()
    names = {
        "control": [settings.control_queue],
        "attempts": [settings.attempt_queue],
        "all": [settings.control_queue, settings.attempt_queue],
    }[queues]
    argv = ["worker", "-Q", ",".join(names), "-P", "prefork", "--loglevel", loglevel]
    if concurrency is None and queues == "control":
        concurrency = 1
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    celery_app.worker_main(argv)


@cli.command()
@run_options
@click.option("--wait", is_flag=True, help="Follow the run until it ends and exit by its phase.")
@timeout_option("With --wait: stop following after this many seconds (exit 3).")
@json_flag
@pass_app
def submit(app: App, spec: RunSpec, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Submit a run of OP to the Celery cluster (same as `run --backend celery --detach`, or
    without --detach with --wait); prints the run id, or with --wait the result."""
    _run_on_cluster(app, spec, not wait, timeout_s, as_json)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--cluster",
    is_flag=True,
    help="Wake the run's coordinator on the Celery cluster instead of executing here.",
)
@click.option("--wait", is_flag=True, help="With --cluster: wait for the run to finish.")
@timeout_option("With --cluster --wait: stop waiting after this many seconds (exit 3).")
@click.option(
    "--force",
    is_flag=True,
    help="Execute here even though the run was submitted to a cluster (its workers must be gone).",
)
@json_flag
@pass_app
def resume(
    app: App,
    run_id: str,
    cluster: bool,
    wait: bool,
    timeout_s: float,
    force: bool,
    as_json: bool,
) -> None:
    """Continue RUN after a crash or a failed attempt (idempotent once finished).

    Without --cluster the remaining states execute in this process; with --cluster the
    cluster's coordinator recovers orphans (respecting live leases) and continues.
    """
    rid = RunId(run_id)
    registry = app.registry()
    loaded = load_run(app.events, app.artifacts, registry, rid)
    if cluster:
        _export_store_urls(app)
        try:
            from workers.submit import wait_for_run
            from workers.tasks import advance
        except ImportError as exc:
            raise _distributed_unavailable(exc) from None
        with _broker_errors():
            advance.delay(str(rid))
        if not wait:
            click.echo(json.dumps({"run_id": str(rid)}) if as_json else f"woke run {rid}")
            return
        with _broker_errors():
            result = wait_for_run(str(rid), timeout_s)
    else:
        if loaded.history.completed is None and not force:
            _refuse_cluster_runs(app, loaded.history)
        show = _wants_progress(as_json)
        tracker = ProgressTracker(total=len(loaded.plan.compiled))
        tracker.done = sum(1 for rec in loaded.history.states.values() if rec.completed)
        engine = LocalEngine(
            app.events, app.artifacts, registry, listener=tracker if show else None
        )
        with _progress(show and loaded.history.completed is None, str(loaded.plan.op_id), tracker):
            result = engine.resume(rid)
    _finish(app, result, as_json, loaded.plan, loaded.manifest.run_config)


def _refuse_cluster_runs(app: App, history: RunHistory) -> None:
    """A run submitted to a cluster is driven by its coordinator: executing it here as well
    would run attempts without leases, which the cluster then takes for orphans."""
    client = getattr(app.events, "client", None)
    if client is None:
        return
    try:
        from workers.leases import Coordination
    except ImportError:
        return
    coordination = Coordination(client)
    if coordination.recorded_plan(str(history.run_id)) is None:
        return  # never submitted to a cluster: an embedded run on Redis stores
    live = coordination.lease_info(str(history.run_id), [s for s, _ in history.open_attempts()])
    busy = f" ({len(live)} attempt(s) running now)" if live else ""
    raise CliError(
        "run_managed_by_cluster",
        f"run {history.run_id} was submitted to a cluster{busy}; use `mfm resume --cluster`, "
        "or --force if its workers are gone for good",
    )


@contextlib.contextmanager
def _broker_errors() -> Iterator[None]:
    """Celery's connection failures, as one structured infrastructure error."""
    try:
        yield
    except MfmError:
        raise
    except Exception as exc:
        from workers.settings import Settings

        broker = redact_url(Settings.from_env().broker_url)
        raise CliError(
            "broker_unavailable",
            f"cannot reach the Celery broker or result store at {broker} ({type(exc).__name__})",
            ExitCode.INFRASTRUCTURE,
        ) from None


def _export_store_urls(app: App) -> None:
    """The distributed runtime reads its stores from the environment: pass ours on."""
    for name, value in (
        ("MFM_EVENTS_URL", app.events_url),
        ("MFM_ARTIFACTS_URL", app.artifacts_url),
    ):
        if value:
            os.environ[name] = value


def _distributed_unavailable(exc: ImportError) -> CliError:
    return CliError(
        "distributed_unavailable",
        f"the distributed backend is not installed (pip install 'mfm-dist[dist]'): {exc.name}",
        ExitCode.INFRASTRUCTURE,
    )


# -- inspection -----------------------------------------------------------------------------------


def _leases(app: App, history: RunHistory) -> dict[str, Any] | None:
    """Live attempt leases of a run on the distributed backend (None elsewhere)."""
    client = getattr(app.events, "client", None)
    open_ids = [state_id for state_id, _ in history.open_attempts()]
    if client is None:
        return None
    try:
        from workers.leases import Coordination
    except ImportError:
        return None
    return dict(Coordination(client).lease_info(str(history.run_id), open_ids))


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
        return run_report(loaded.history, loaded.plan, loaded.manifest.run_config, leases)
    history = RunHistory.load(app.events, rid)
    click.echo(
        f"warning: plan unavailable ({reason}); showing states from the history only", err=True
    )
    return run_report(history)


@cli.command()
@click.argument("run_id", metavar="RUN")
@json_flag
@pass_app
def status(app: App, run_id: str, as_json: bool) -> None:
    """Phase of RUN and, per state, status, attempts, snapshot and last error."""
    result = _report_for(app, RunId(run_id))
    if as_json:
        click.echo(result.model_dump_json())
    else:
        render_report(stdout_console(), result)


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(0, None),
    default=20,
    show_default=True,
    help="At most this many runs (0: all).",
)
@json_flag
@pass_app
def runs(app: App, limit: int, as_json: bool) -> None:
    """Runs in the event store, newest first."""
    summaries = app.events.list_runs(limit=limit or None)
    if as_json:
        click.echo("[" + ",".join(s.model_dump_json() for s in summaries) + "]")
    else:
        render_runs(stdout_console(), summaries, app.events_location())


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--json", "as_json", is_flag=True, help="One persisted envelope (canonical JSON) per line."
)
@pass_app
def events(app: App, run_id: str, as_json: bool) -> None:
    """The event stream of RUN."""
    rid = RunId(run_id)
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
    """Secret payloads are stored but never shown (CONTRACT §9)."""
    text = data.decode("utf-8", errors="replace")
    if is_secret_string(text):
        raise CliError("secret_output_refused", "artifact content is secret-shaped; not shown")


@cli.command()
@click.argument("artifact_id", metavar="ID")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to FILE."
)
@pass_app
def artifact(app: App, artifact_id: str, output: str | None) -> None:
    """The raw, hash-verified bytes of artifact ID."""
    try:
        data = app.artifacts.get(ArtifactId(artifact_id))
    except NotFound:
        raise CliError("artifact_not_found", f"no artifact {artifact_id} in the store") from None
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
@pass_app
def context(app: App, run_id: str, state_id: str | None) -> None:
    """The final context snapshot of RUN (or of one state) as JSON."""
    history = RunHistory.load(app.events, RunId(run_id))
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
@pass_app
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
@pass_app
def graph(app: App, op: str, op_version: str | None, raw_input: str | None, fmt: str) -> None:
    """The flattened plan of OP: states in canonical order, tags and edges."""
    run_input = parse_input(raw_input)
    prepared = prepare_run(app.registry(), op, run_input, RunConfig(), version=op_version)
    click.echo(render_plan(prepared.plan, fmt), nl=False)


@cli.command()
@click.argument("run_id", metavar="RUN")
@json_flag
@pass_app
def verify(app: App, run_id: str, as_json: bool) -> None:
    """Re-check RUN's history, hashes and snapshots; exit 1 unless it verifies."""
    from mfm_dist.verify import verify_run

    result = verify_run(app.events, app.artifacts, app.registry(), RunId(run_id))
    if any(v.code == "run_not_found" for v in result.violations):
        raise NotFound(f"run {run_id} not found", code="run_not_found")
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
@pass_app
def replay(app: App, run_id: str, as_json: bool) -> None:
    """Re-execute RUN against its recorded facts (no network, nothing written) and compare
    every state's snapshot; exit 1 on the first divergence."""
    from mfm_dist.replay import replay_run

    result = replay_run(app.events, app.artifacts, app.registry(), RunId(run_id))
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


def main() -> None:
    """Console script entry point (`mfm`)."""
    cli.main(prog_name="mfm")


if __name__ == "__main__":
    main()
