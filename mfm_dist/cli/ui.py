"""`mfm ui`: the read-only web dashboard and its /metrics (docs/dashboard.md)."""

from __future__ import annotations

from collections.abc import Callable

import click

from mfm_dist.cli.app import App, cli, pass_reader
from mfm_dist.cli.errors import CliError, ExitCode

DEFAULT_PORT = 8765


def _queue_depths(app: App) -> Callable[[], dict[str, int]] | None:
    """Broker queue depths for `mfm_queue_depth`, when the stores are the cluster's and a
    broker is configured (None otherwise), asked through an app built from the settings
    the CLI read at its start."""
    cluster = app.cluster()
    return cluster.queue_depths() if cluster is not None else None


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--token",
    envvar="MFM_UI_TOKEN",
    help="Bearer token every request must carry (required off loopback; ≥ 16 characters).",
)
@click.option(
    "--token-file",
    envvar="MFM_UI_TOKEN_FILE",
    help="A file holding the token (e.g. a compose secret; its final newline dropped). "
    "--token wins.",
)
@pass_reader
def ui(app: App, host: str, port: int, token: str | None, token_file: str | None) -> None:
    """Serve the read-only web dashboard (runs, run graphs, timelines, events, verify and
    replay, a JSON API under /api/ and Prometheus /metrics) over the stores in force."""
    try:
        from mfm_dist.ui.app import create_app
        from mfm_dist.ui.data import Dashboard
        from mfm_dist.ui.server import BindRefused, check_binding, read_token_file, serve
    except ImportError as exc:
        raise CliError(
            "ui_unavailable",
            f"the dashboard needs the 'ui' extra (pip install 'mfm-dist[ui]'): {exc.name}",
            ExitCode.INFRASTRUCTURE,
        ) from None
    token = token or None
    try:
        if token is None and token_file:
            token = read_token_file(token_file)
        check_binding(host, token)
    except BindRefused as exc:
        raise CliError(exc.code, exc.message) from None
    app.stores()  # open now: a wrong URL fails here, not on the first page
    app.registry()  # and load the operations (the run pages re-derive plans with them)
    dashboard = Dashboard(app)
    web = create_app(
        dashboard,
        token=token,
        queue_depths=_queue_depths(app),
    )

    def ready(url: str) -> None:
        click.echo(f"mfm ui: {app.events_location()} on {url} (Ctrl-C stops)", err=True)

    serve(web, host, port, token, on_ready=ready)
