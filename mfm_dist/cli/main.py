"""The `mfm` command line: run, resume and inspect runs on any configured backend.

The CLI is thin: it parses options, calls the library (`prepare_run`,
`LocalEngine`, `run_report`, `verify_run`, the stores) and renders results.
Every error ends as one `error[<code>]: <message>` line on stderr and a stable
exit code (see `mfm_dist.cli.errors`).
"""

from __future__ import annotations

from mfm_dist.cli import (  # noqa: F401 - commands register
    backfill,
    cancelling,
    contract,
    inspection,
    running,
    ui,
)
from mfm_dist.cli.app import App, cli

__all__ = ["App", "cli", "main"]


def main() -> None:
    """Console script entry point (`mfm`)."""
    cli.main(prog_name="mfm")


if __name__ == "__main__":
    main()
