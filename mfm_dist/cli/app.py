"""The `mfm` command group: global options, the stores and registry they select, and the
error handling every command shares (one `error[<code>]` line, stable exit codes)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.cli.errors import ExitCode, report
from mfm_dist.errors import NotFound
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.lookup import resolve_artifact_id, resolve_run_id
from mfm_dist.operations import OperationRegistry
from mfm_dist.secrets import redact_url
from mfm_dist.settings import Settings
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.urls import Stores, open_stores

if TYPE_CHECKING:
    from mfm_dist.cluster_view import ClusterView
    from workers.settings import ClusterSettings

MAX_ATTEMPTS_LIMIT = 2**32 - 1
MAX_FAN_OUT = 1_000_000
P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class App:
    """Global options, the settings the CLI read at its start, and the stores and registry
    they select (opened on first use).

    `home`, `events_url`, `artifacts_url` and `ops_modules` are the options given on the
    command line; they apply over `settings` (`config()`). `environ` is the environment as
    the CLI read it, kept for the cluster's settings (built only by cluster commands).

    `read_only` (set by the read commands) opens the embedded stores without creating or
    changing anything, so they work on an archived, read-only home and never create
    `./.mfm` where they run."""

    home: str | None = None
    events_url: str | None = None
    artifacts_url: str | None = None
    ops_modules: tuple[str, ...] = ()
    debug: bool = False
    read_only: bool = False
    settings: Settings = field(default_factory=Settings)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    _stores: Stores | None = field(default=None, repr=False)
    _registry: OperationRegistry | None = field(default=None, repr=False)
    _cluster: tuple[ClusterView | None] | None = field(default=None, repr=False)

    def config(self) -> Settings:
        """The settings in force: the environment's, with the command line's store options."""
        return self.settings.with_stores(
            home=self.home, events_url=self.events_url, artifacts_url=self.artifacts_url
        )

    def cluster_settings(self) -> ClusterSettings:
        """The distributed backend's settings: read from the environment the CLI read at
        its start, over this command line's stores (so a cluster command needs no
        environment of its own, and the CLI never writes one)."""
        from workers.settings import ClusterSettings

        return ClusterSettings.from_env(self.environ).with_core(self.config())

    def registry(self) -> OperationRegistry:
        if self._registry is None:
            self._registry = OperationRegistry.default(
                extra_modules=self.ops_modules, settings=self.config()
            )
        return self._registry

    def stores(self) -> Stores:
        if self._stores is None:
            self._stores = open_stores(read_only=self.read_only, settings=self.config())
        return self._stores

    def cluster(self) -> ClusterView | None:
        """The distributed backend behind the stores in force — what the commands and the
        dashboard read from it (leases, holders, submissions, queue depths) — or None for
        the embedded stores."""
        if self._cluster is None:
            from mfm_dist.cluster_view import ClusterView

            self._cluster = (ClusterView.of(self.events, self.cluster_settings),)
        return self._cluster[0]

    @property
    def events(self) -> EventStore:
        return self.stores().events

    @property
    def artifacts(self) -> ArtifactStore:
        return self.stores().artifacts

    def run_id(self, text: str) -> RunId:
        """The run `text` names: a full run id, or a unique prefix (≥ 8 characters) of one."""
        return resolve_run_id(self.events, text)

    def artifact_id(self, text: str) -> ArtifactId:
        """The artifact `text` names: a full id, or a unique prefix (≥ 8 characters), such
        as the 12-character snapshot ids `mfm status` prints."""
        return resolve_artifact_id(self.artifacts, text)

    def events_location(self) -> str:
        """The event store URL in force, safe to print."""
        opened = self._stores.events.url if self._stores is not None else ""
        if opened:
            return redact_url(str(opened))
        events, _ = self.config().store_urls()
        return redact_url(events)

    def global_options(self) -> list[str]:
        """The global options given on this command line, as arguments (for a command to
        suggest; what came from the environment still does); a URL is shown redacted, so
        one with credentials needs them put back (or taken from the environment)."""
        args: list[str] = []
        if self.home:
            args += ["--home", self.home]
        if self.events_url:
            args += ["--events-url", redact_url(self.events_url)]
        if self.artifacts_url:
            args += ["--artifacts-url", redact_url(self.artifacts_url)]
        for module in self.ops_modules:
            args += ["--ops", module]
        return args

    def close(self) -> None:
        self._cluster = None
        if self._stores is not None:
            stores, self._stores = self._stores, None
            stores.close()


class MfmGroup(click.Group):
    """Runs commands in non-standalone mode so every failure goes through `report`."""

    debug = False

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NotFound as exc:
            app = ctx.obj
            if exc.code != "run_not_found" or not isinstance(app, App):
                raise
            # Say where we looked: the usual cause is another store (--home, MFM_EVENTS_URL).
            raise NotFound(
                f"{exc.info.message} in {app.events_location()}", code="run_not_found"
            ) from None

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
    type=click.Path(file_okay=False),
    help="Embedded store root (default: MFM_HOME, else ./.mfm).",
)
@click.option(
    "--events-url", help="Event store URL (sqlite://, redis://…; default: MFM_EVENTS_URL)."
)
@click.option(
    "--artifacts-url", help="Artifact store URL (file://, s3://…; default: MFM_ARTIFACTS_URL)."
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
    # The program's start: the one read of the environment (docs/configuration.md).
    environ = dict(os.environ)
    app = App(
        home,
        events_url or None,
        artifacts_url or None,
        ops_modules,
        debug,
        settings=Settings.from_env(environ),
        environ=environ,
    )
    ctx.obj = app
    ctx.call_on_close(app.close)


pass_app = click.make_pass_decorator(App)


def pass_reader(fn: Callable[Concatenate[App, P], R]) -> Callable[P, R]:
    """`pass_app` for commands that only read: the stores are opened read-only."""

    @functools.wraps(fn)
    def reader(app: App, /, *args: P.args, **kwargs: P.kwargs) -> R:
        app.read_only = True
        return fn(app, *args, **kwargs)

    return pass_app(reader)


json_flag = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
input_option = click.option(
    "--input", "raw_input", metavar="JSON|@FILE", help="Run input as JSON, or @FILE to read one."
)
