"""`mfm run`, `submit`, `rerun`, `resume` and `worker`: starting and continuing runs, here or
on the Celery cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console

from mfm_dist.artifacts import get_json
from mfm_dist.cli.app import (
    MAX_ATTEMPTS_LIMIT,
    MAX_FAN_OUT,
    App,
    cli,
    input_option,
    json_flag,
    pass_app,
)
from mfm_dist.cli.drivers import DrivenElsewhere, Driver, DriverLock
from mfm_dist.cli.errors import CliError, ExitCode
from mfm_dist.cli.options import PROFILES, build_run_config, parse_input, parse_labels
from mfm_dist.cli.output import (
    format_ms,
    result_lines,
    stderr_console,
)
from mfm_dist.cli.progress import LiveProgress, ProgressTracker
from mfm_dist.cluster_view import refuse_cluster_takeover
from mfm_dist.config import RunConfig
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import (
    PreparedRun,
    labelled_submission,
    load_run,
    prepare_run,
    result_from_history,
    store_manifest,
    submission_of,
)
from mfm_dist.engine.local import EventListener, LocalEngine
from mfm_dist.errors import ConcurrencyError, Corruption, InvalidInput, MfmError, RunError
from mfm_dist.events import EventEnvelope, RunStarted
from mfm_dist.ids import RunId
from mfm_dist.manifest import RunManifest
from mfm_dist.operations import Pipeline
from mfm_dist.plan import ExecutionPlan
from mfm_dist.reports import StateStatus, run_report
from mfm_dist.results import RunPhase, RunResult
from mfm_dist.secrets import redact_url

if TYPE_CHECKING:
    from workers.runtime import Runtime

# -- run / resume ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(
    show: bool, label: str, tracker: ProgressTracker, console: Console | None = None
) -> Iterator[None]:
    if not show:
        yield
        return
    with LiveProgress(console or stderr_console(), label, tracker):
        yield


# -- driving a run in this process: its id at once, Ctrl-C, and other drivers ---------------------


@dataclass
class _Drive:
    """What `_driving` needs to know about the run it guards."""

    run_id: RunId
    started: bool  # RunStarted is recorded (a resumed run always is)
    finished: bool = False  # the engine returned: RunCompleted is recorded


def resume_command(app: App, run_id: RunId) -> str:
    """The exact command that continues `run_id` with the same stores and operations."""
    return shlex.join(["mfm", *app.global_options(), "resume", str(run_id)])


def _write_stderr(text: str) -> None:
    """From a signal handler: straight to the file descriptor (no buffered-IO re-entry)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


@contextlib.contextmanager
def _sigint_policy(app: App, drive: _Drive) -> Iterator[None]:
    """The first Ctrl-C stops scheduling and lets the attempts in flight finish (they are
    recorded); a second one exits at once (those attempts stay open for `resume`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            _write_stderr(
                "\ninterrupt: letting the attempts in flight finish (Ctrl-C again to stop now)\n"
            )
            raise KeyboardInterrupt
        if drive.started:
            _write_stderr(
                f"error[interrupted]: run {drive.run_id} stopped at once (attempts in flight left "
                f"open); resume with: {resume_command(app, drive.run_id)}\n"
            )
        else:
            _write_stderr(f"error[interrupted]: stopped before run {drive.run_id} started\n")
        os._exit(ExitCode.INTERRUPTED)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _driven_elsewhere(run_id: RunId, driver: Driver | None) -> CliError:
    who = "another process"
    if driver is not None:
        who = f"{driver.where} (since {format_ms(driver.since_ms)})"
    return CliError(
        "run_driven_elsewhere",
        f"run {run_id} is being driven by {who}; follow it with `mfm status {run_id}`, "
        "or stop that process and resume again",
    )


@contextlib.contextmanager
def _driving(app: App, run_id: RunId, *, started: bool) -> Iterator[_Drive]:
    """Execute `run_id` here as its only driver, and say what happened when it stops early.

    Holds the run's driver lock (`mfm_dist.cli.drivers`) so `mfm runs`/`status` can tell a
    live run from an abandoned one, and refuses (`run_driven_elsewhere`) if a live process
    holds it. Ctrl-C ends with `error[interrupted]`, the run id, the exact resume command
    and exit 130. A driver without the lock (another host, the Python API) is detected by
    the store's expected-seq guard; losing that race is `run_driven_elsewhere` too."""
    try:
        lock = DriverLock.acquire(app.events, str(run_id))
    except DrivenElsewhere as exc:
        raise _driven_elsewhere(run_id, exc.driver) from None
    drive = _Drive(run_id, started)
    try:
        with _sigint_policy(app, drive):
            yield drive
    except KeyboardInterrupt:
        if not (drive.started or _has_events(app, run_id)):
            raise CliError(
                "interrupted",
                f"interrupted before run {run_id} started; nothing to resume",
                ExitCode.INTERRUPTED,
            ) from None
        drive.started = True
        raise CliError(
            "interrupted",
            f"run {run_id} interrupted; resume with: {resume_command(app, run_id)}",
            ExitCode.INTERRUPTED,
        ) from None
    except ConcurrencyError as exc:
        if exc.code != "expected_seq_mismatch":
            raise
        details = exc.info.details if isinstance(exc.info.details, dict) else {}
        moved = ""
        if "head_seq" in details and "expected_seq" in details:
            moved = f" (event {details['head_seq']} was written where this process expected "
            moved += f"{int(details['expected_seq']) + 1})"
        raise CliError(
            "run_driven_elsewhere",
            f"run {run_id} is being driven by another process: it wrote to the run's history"
            f"{moved} while this process was driving it, so this process stopped; nothing "
            f"is lost — follow the run with `mfm status {run_id}`",
        ) from None
    finally:
        if lock is not None:
            started_now = drive.started or _has_events(app, run_id)
            lock.release(finished=drive.finished or not started_now)


def _has_events(app: App, run_id: RunId) -> bool:
    """Whether the run exists in the store (True when the store cannot say)."""
    try:
        return app.events.head_seq(run_id) > 0
    except Exception:
        return True


@dataclass
class _Announcer:
    """An engine listener that says the run id the moment the run is recorded."""

    drive: _Drive
    console: Console | None  # None: quiet (--json keeps stderr for errors only)
    label: str
    total: int
    note: str = ""  # e.g. "; rerun of <id>"

    def __call__(self, env: EventEnvelope) -> None:
        if not isinstance(env.event, RunStarted) or self.drive.started:
            return
        self.drive.started = True
        if self.console is not None:
            self.console.print(
                f"started run {env.run_id} ({self.label}, {self.total} states{self.note})",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )


def _listeners(*listeners: EventListener | None) -> EventListener:
    """One engine listener calling each given one; a display never fails the run."""
    active = [fn for fn in listeners if fn is not None]

    def listen(env: EventEnvelope) -> None:
        for fn in active:
            with contextlib.suppress(Exception):
                fn(env)

    return listen


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
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


label_option = click.option(
    "--label",
    "raw_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Label the run (repeatable); kept with it for `mfm runs --label`, never in its "
    "manifest (snapshot ids do not change).",
)


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
        state_timeout_s: float | None,
        run_timeout_s: float | None,
        replay: bool,
        raw_labels: tuple[str, ...],
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
                state_timeout_s=state_timeout_s,
                run_timeout_s=run_timeout_s,
                replay=replay,
            ),
            labels=parse_labels(raw_labels),
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
            "--state-timeout",
            "state_timeout_s",
            type=click.FloatRange(0.001, None),
            metavar="S",
            help="Timeout of states that declare none (seconds): past it, a retryable "
            "state_timeout.",
        ),
        click.option(
            "--run-timeout",
            "run_timeout_s",
            type=click.FloatRange(0.001, None),
            metavar="S",
            help="The run's overall deadline (seconds from its start): past it, it is "
            "cancelled (run_deadline_exceeded).",
        ),
        click.option(
            "--replay", is_flag=True, help="Replay recorded facts instead of doing live IO."
        ),
        label_option,
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


backend_option = click.option(
    "--backend",
    type=click.Choice(["local", "celery"]),
    default="local",
    envvar="MFM_BACKEND",
    show_default=True,
    help="local: execute here; celery: submit to the cluster and follow the run.",
)
detach_option = click.option(
    "--detach", is_flag=True, help="With --backend celery: print the run id and return."
)


@cli.command()
@run_options
@backend_option
@detach_option
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
    _run_here(app, spec, as_json)


def _run_here(
    app: App,
    spec: RunSpec,
    as_json: bool,
    *,
    prepared: PreparedRun | None = None,
    note: str = "",
) -> None:
    """Execute a new run in this process (it says its id at once; Ctrl-C: see `_driving`)."""
    registry = app.registry()
    if prepared is None:
        prepared = prepare_run(
            registry, spec.op, spec.run_input, spec.run_config, version=spec.version
        )
    manifest_id = store_manifest(app.artifacts, prepared.manifest)
    submission = labelled_submission(prepared, spec.run_input, spec.labels)
    show = _wants_progress(as_json)
    console = stderr_console()
    label, total = str(prepared.plan.op_id), len(prepared.plan.compiled)
    tracker = ProgressTracker(total=total)
    run_id = RunId.mint()
    with _driving(app, run_id, started=False) as drive:
        announcer = _Announcer(drive, None if as_json else console, label, total, note)
        listener = _listeners(announcer, tracker if show else None)
        engine = LocalEngine(app.events, app.artifacts, registry, listener=listener)
        with _progress(show, label, tracker, console):
            result = engine.start(
                plan=prepared.plan,
                run_config=prepared.run_config,
                manifest=prepared.manifest,
                manifest_id=manifest_id,
                initial_context=prepared.initial_context,
                run_id=run_id,
                submission=submission,
            )
        drive.finished = True
    _finish(app, result, as_json, prepared.plan, prepared.run_config)


def _run_on_cluster(
    app: App, spec: RunSpec, detach: bool, timeout_s: float, as_json: bool, note: str = ""
) -> None:
    """Submit to the cluster; then either return the run id or follow the run live (it
    says its id at once; Ctrl-C stops following, and the run continues on the cluster)."""
    prepared = prepare_run(
        app.registry(), spec.op, spec.run_input, spec.run_config, version=spec.version
    )
    with on_cluster(app) as rt:
        from workers.submit import submit_run

        run_id = submit_run(
            spec.op,
            spec.run_input,
            spec.run_config,
            version=spec.version,
            labels=spec.labels,
            runtime=rt,
        )
    if detach:
        click.echo(json.dumps({"run_id": str(run_id)}) if as_json else f"submitted run {run_id}")
        return
    show = _wants_progress(as_json)
    label, total = str(prepared.plan.op_id), len(prepared.plan.compiled)
    if not as_json:
        stderr_console().print(
            f"started run {run_id} ({label}, {total} states{note}) on the cluster",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    tracker = ProgressTracker(total=total)
    try:
        history = _follow(app, run_id, tracker, show, label, timeout_s)
    except KeyboardInterrupt:
        wait_command = shlex.join(["mfm", *app.global_options(), "wait", str(run_id)])
        raise CliError(
            "interrupted",
            f"stopped following run {run_id}; it continues on the cluster — follow it with: "
            f"{wait_command}",
            ExitCode.INTERRUPTED,
        ) from None
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
    type=click.Choice(["control", "submit", "attempts", "all"]),
    default="all",
    show_default=True,
    help="control: coordination (run one, -c 1); submit: submissions (the mfm.submit and "
    "default queues); attempts: state attempts (scale these).",
)
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), help="Worker processes.")
@click.option("--loglevel", default="INFO", show_default=True)
@pass_app
def worker(app: App, queues: str, concurrency: int | None, loglevel: str) -> None:
    """Start a Celery worker configured for mfm-dist (settings from MFM_* variables and the
    global store options)."""
    try:
        from workers.boot import worker_app
    except ImportError as exc:
        raise _distributed_unavailable(exc) from None
    settings = app.cluster_settings()
    celery_app = worker_app(settings)  # its process runtime is bound when the worker starts
    submit = [settings.submit_queue] + ([settings.default_queue] if settings.default_queue else [])
    names = {
        "control": [settings.control_queue],
        "submit": submit,
        "attempts": [settings.attempt_queue],
        "all": [settings.control_queue, *submit, settings.attempt_queue],
    }[queues]
    argv = ["worker", "-Q", ",".join(names), "-P", "prefork", "--loglevel", loglevel]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
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


RERUN_LABEL = "rerun_of"
"""The label of a run started by `mfm rerun`: the id of the run it repeats."""


def rerun_spec(app: App, rid: RunId) -> tuple[RunSpec, PreparedRun]:
    """What run `rid` ran — op, version, input and config from its manifest, and its labels
    — as the spec of a new run, with that run prepared by the current code. The new run's
    manifest equals the original's except for the build record (this process's); a
    registered pipeline that no longer expands as it did is refused (`rerun_plan_changed`)."""
    history = RunHistory.load(app.events, rid)
    manifest_id = str(history.started.manifest_id)
    try:
        manifest = RunManifest.model_validate(get_json(app.artifacts, manifest_id, "manifest"))
        pipeline = Pipeline.model_validate(_input_params(manifest)["pipeline"])
    except MfmError:
        raise
    except (ValueError, KeyError, TypeError):
        raise Corruption(
            "manifest_invalid", f"the manifest of run {rid} does not decode"
        ) from None
    run_input = _input_params(manifest)["input"]
    steps = pipeline.steps
    single = (
        len(steps) == 1
        and str(steps[0].step_id) == "main"
        and str(steps[0].op_id) == str(pipeline.machine_id)
        and steps[0].op_version == pipeline.pipeline_version
        and steps[0].op_config == run_input
    )
    record = submission_of(history.envelopes)
    spec = RunSpec(
        op=str(pipeline.machine_id),
        version=pipeline.pipeline_version if single else None,
        run_input=run_input,
        run_config=manifest.run_config,
        labels=dict(record.labels) if record is not None else {},
    )
    prepared = prepare_run(
        app.registry(), spec.op, spec.run_input, spec.run_config, version=spec.version
    )
    if prepared.manifest.input_params != manifest.input_params:
        raise RunError(
            "rerun_plan_changed",
            f"pipeline {spec.op} is now registered with other steps than run {rid} ran; "
            "it cannot be repeated as it was",
        )
    return spec, prepared


def _input_params(manifest: RunManifest) -> dict[str, Any]:
    params = manifest.input_params
    if not isinstance(params, dict) or "pipeline" not in params or "input" not in params:
        raise Corruption("manifest_input_params_invalid", "manifest input_params are incomplete")
    return params


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--label",
    "raw_labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Add or change a label of the new run (repeatable).",
)
@backend_option
@detach_option
@timeout_option("With --backend celery: stop following after this many seconds (exit 3).")
@json_flag
@pass_app
def rerun(
    app: App,
    run_id: str,
    raw_labels: tuple[str, ...],
    backend: str,
    detach: bool,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Start a new run of what RUN ran (same op, version, input and config), labelled
    rerun_of=RUN plus RUN's labels; here, or with --backend celery on the cluster."""
    rid = app.run_id(run_id)
    spec, prepared = rerun_spec(app, rid)
    extra = parse_labels(raw_labels)
    labels = parse_labels(
        [f"{k}={v}" for k, v in {**spec.labels, **extra, RERUN_LABEL: str(rid)}.items()],
        "the labels of the new run",
    )
    spec = dataclasses.replace(spec, labels=labels)
    note = f"; rerun of {rid}"
    if backend == "celery":
        _run_on_cluster(app, spec, detach, timeout_s, as_json, note)
        return
    _run_here(app, spec, as_json, prepared=prepared, note=note)


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
    rid = app.run_id(run_id)
    registry = app.registry()
    loaded = load_run(app.events, app.artifacts, registry, rid)
    if cluster:
        with on_cluster(app) as rt:
            from workers.submit import wait_for_run, wake

            wake(rt, str(rid))
            if not wait:
                click.echo(json.dumps({"run_id": str(rid)}) if as_json else f"woke run {rid}")
                return
            result = wait_for_run(str(rid), timeout_s, runtime=rt)
    else:
        if loaded.history.completed is None:
            refuse_cluster_takeover(app.events, rid, force=force, history=loaded.history)
        show = _wants_progress(as_json)
        tracker = ProgressTracker(total=len(loaded.plan.compiled))
        tracker.done = sum(1 for rec in loaded.history.states.values() if rec.completed)
        engine = LocalEngine(
            app.events, app.artifacts, registry, listener=tracker if show else None
        )
        if loaded.history.completed is not None:
            result = engine.resume(rid)  # finished: returns its result, appends nothing
        else:
            with _driving(app, rid, started=True) as drive:
                with _progress(show, str(loaded.plan.op_id), tracker):
                    result = engine.resume(rid)
                drive.finished = True
    _finish(app, result, as_json, loaded.plan, loaded.manifest.run_config)


@contextlib.contextmanager
def _broker_errors(broker_url: str) -> Iterator[None]:
    """Celery's connection failures, as one structured infrastructure error."""
    try:
        yield
    except (MfmError, ImportError):
        raise
    except Exception as exc:
        raise CliError(
            "broker_unavailable",
            f"cannot reach the Celery broker or result store at {redact_url(broker_url)} "
            f"({type(exc).__name__})",
            ExitCode.INFRASTRUCTURE,
        ) from None


@contextlib.contextmanager
def on_cluster(app: App) -> Iterator[Runtime]:
    """Work on the distributed backend from the CLI: a runtime built from the settings the
    CLI read at its start, over its own stores (`App.cluster_settings`) — handed to the
    cluster code as a parameter, never through the environment — and closed after.
    Importing `workers` without the `dist` extra is `distributed_unavailable`, a broker
    fault `broker_unavailable`."""
    try:
        from workers.runtime import Runtime
    except ImportError as exc:
        raise _distributed_unavailable(exc) from None
    settings = app.cluster_settings()
    rt = Runtime(settings)
    try:
        with _broker_errors(settings.broker_url):
            yield rt
    except ImportError as exc:
        raise _distributed_unavailable(exc) from None
    finally:
        rt.close()


def _distributed_unavailable(exc: ImportError) -> CliError:
    return CliError(
        "distributed_unavailable",
        f"the distributed backend is not installed (pip install 'mfm-dist[dist]'): {exc.name}",
        ExitCode.INFRASTRUCTURE,
    )
