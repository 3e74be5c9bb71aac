"""How the CLI turns exceptions into one safe line on stderr and an exit code.

Exit codes are stable API: 0 completed, 1 failed run (or a failed check),
2 invalid input, 3 infrastructure error, 130 interrupted (Ctrl-C). Messages come from the library's
structured errors, which never carry secrets; anything else is checked once more
before it is shown.
"""

from __future__ import annotations

import traceback
from enum import IntEnum
from typing import TextIO

import click

from mfm_dist.errors import InvalidInput, MfmError, RunError
from mfm_dist.secrets import is_secret_string

REDACTED = "details redacted"

# A run id the user typed that no store knows is bad input, not an infrastructure fault.
USER_NAMED_NOT_FOUND = frozenset({"run_not_found"})
# Run-level conditions that are about the infrastructure, not the input.
INFRASTRUCTURE_CODES = frozenset({"run_wait_timeout"})


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    INVALID_INPUT = 2
    INFRASTRUCTURE = 3
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class CliError(Exception):
    """An error found by the CLI itself (not the library), with its code and exit code."""

    def __init__(self, code: str, message: str, exit_code: ExitCode = ExitCode.INVALID_INPUT):
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


def safe_text(text: str) -> str:
    """`text`, unless it looks like it carries a secret."""
    return REDACTED if is_secret_string(text) else text


def classify(exc: BaseException) -> tuple[str, str, ExitCode]:
    """(code, message, exit code) for any exception that reached the top of a command."""
    if isinstance(exc, CliError):
        return exc.code, safe_text(exc.message), exc.exit_code
    if isinstance(exc, click.ClickException):
        # Usage errors quote the offending argument, which may be anything the user typed.
        code = "usage" if isinstance(exc, click.UsageError) else "cli_error"
        message = safe_text(exc.format_message())
        return code, message, ExitCode(exc.exit_code) if exc.exit_code in (1, 2) else ExitCode(2)
    if isinstance(exc, MfmError):
        info = exc.info
        code = info.code if not is_secret_string(info.code) else "redacted_error"
        message = safe_text(info.message)
        if info.code in INFRASTRUCTURE_CODES:
            return code, message, ExitCode.INFRASTRUCTURE
        if isinstance(exc, InvalidInput | RunError) or info.code in USER_NAMED_NOT_FOUND:
            return code, message, ExitCode.INVALID_INPUT
        return code, message, ExitCode.INFRASTRUCTURE
    if isinstance(exc, KeyboardInterrupt | click.Abort):
        return "interrupted", "interrupted", ExitCode.INTERRUPTED
    return "internal_error", safe_text(f"{type(exc).__name__}: {exc}"), ExitCode.INFRASTRUCTURE


def report(exc: BaseException, stream: TextIO, *, debug: bool = False) -> ExitCode:
    """Write `error[<code>]: <message>` (after the traceback with `--debug`); return the code."""
    code, message, exit_code = classify(exc)
    if debug:
        stream.write("".join(traceback.format_exception(exc)))
    one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    stream.write(f"error[{code}]: {one_line}\n")
    stream.flush()
    return exit_code
