"""The `exec` transport (docs/io-and-replay.md): run an allow-listed program, JSON in, JSON out.

Request: `{"kind":"run_program_v1", "program_path", "argv", "stdin_json",
"timeout_ms", "env"}`. `argv` are the arguments after the program (the program
path is argv[0]); `env` is the child's whole environment (nothing is inherited,
so deployment credentials never leak into programs) plus a fixed `PATH` when the
request does not set one.

Safety: the program's real path (symlinks and `..` resolved) must lie,
component-wise, under a prefix of `MFM_EXEC_ALLOW` (`/a:/b`; empty disables
exec). One deadline covers the whole run, including writing stdin; a single
thread multiplexes stdin/stdout/stderr with non-blocking pipes, so full pipes
never deadlock; on timeout or overflow the whole process group is killed.
Errors carry only path, limits, counts, exit code and signal — never payloads,
output or the environment. Exit code 75 (`EX_TEMPFAIL`) marks a failure as
retryable; timeouts and spawn failures are retryable too.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mfm_dist.canonical import JsonValue
from mfm_dist.errors import ErrorCategory, InvalidInput, TransportError
from mfm_dist.secrets import shown

MIB = 1 << 20
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 3_600_000
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
EX_TEMPFAIL = 75
_CHUNK = 64 * 1024


class ExecRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["run_program_v1"]
    program_path: str = Field(min_length=1)
    argv: list[str] = Field(default_factory=list)
    stdin_json: JsonValue = None
    timeout_ms: int = Field(default=DEFAULT_TIMEOUT_MS, ge=1, le=MAX_TIMEOUT_MS)
    env: dict[str, str] = Field(default_factory=dict)


class ExecError(TransportError):
    """An `exec_*` failure; details hold only path, limits, counts, exit code, signal."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        program_path: str | None = None,
        retryable: bool = False,
        category: ErrorCategory | None = None,
        **details: Any,
    ) -> None:
        info: dict[str, Any] = {}
        if program_path is not None:
            info["program_path"] = shown(program_path)
        info.update(details)
        super().__init__(code, message, retryable=retryable, category=category, details=info)


def _request_invalid(reason: str, fields: Sequence[str] = ()) -> ExecError:
    return ExecError(
        "exec_request_invalid",
        f"invalid exec request: {reason}",
        category=ErrorCategory.PARSING_INPUT,
        fields=sorted(set(fields)),
    )


def parse_request(request: JsonValue) -> ExecRequest:
    """Validate without echoing values (pydantic messages would quote the input)."""
    if not isinstance(request, dict):
        raise _request_invalid("the request must be an object")
    try:
        parsed = ExecRequest.model_validate(request)
    except ValidationError as exc:
        known = set(ExecRequest.model_fields)
        fields = [str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["loc"][0] in known]
        unknown = any(e["type"] == "extra_forbidden" for e in exc.errors())
        raise _request_invalid(
            "unknown fields" if unknown and not fields else "bad or missing fields", fields
        ) from None
    if not os.path.isabs(parsed.program_path) or "\0" in parsed.program_path:
        raise _request_invalid("program_path must be an absolute path", ["program_path"])
    if any("\0" in a for a in parsed.argv):
        raise _request_invalid("argv entries must not contain NUL", ["argv"])
    for name, value in parsed.env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise _request_invalid("env names must be non-empty, without '=' or NUL", ["env"])
    return parsed


def parse_allow(spec: str) -> list[Path]:
    """`/a:/b` → resolved absolute prefixes; empty entries are ignored."""
    prefixes: list[Path] = []
    for entry in spec.split(":"):
        entry = entry.strip()
        if not entry:
            continue
        if not os.path.isabs(entry):
            raise InvalidInput(
                "exec_allow_invalid", "MFM_EXEC_ALLOW entries must be absolute paths"
            )
        prefixes.append(Path(os.path.realpath(entry)))
    return prefixes


class ExecTransport:
    """Runs allow-listed programs. Thread-safe: each call owns its process and pipes."""

    def __init__(
        self,
        allow: Sequence[str | os.PathLike[str]],
        *,
        max_stdin_bytes: int = MIB,
        max_stdout_bytes: int = MIB,
        max_stderr_bytes: int = MIB,
    ) -> None:
        self.allow = parse_allow(":".join(os.fspath(p) for p in allow))
        self.max_stdin_bytes = max_stdin_bytes
        self.max_stdout_bytes = max_stdout_bytes
        self.max_stderr_bytes = max_stderr_bytes

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ExecTransport:
        """Configured from `MFM_EXEC_ALLOW` in `environ`, a mapping the caller read
        (programs use `TransportRegistry.default(settings.transports)`)."""
        return cls(parse_allow(environ.get("MFM_EXEC_ALLOW", "")))

    def call(self, request: JsonValue) -> JsonValue:
        req = parse_request(request)
        path = req.program_path
        real = self._check_program(path)
        try:
            stdin = orjson.dumps(req.stdin_json)
        except TypeError:
            raise _request_invalid("stdin_json is not JSON", ["stdin_json"]) from None
        if len(stdin) > self.max_stdin_bytes:
            raise ExecError(
                "exec_stdin_too_large",
                "stdin exceeds the limit",
                program_path=path,
                limit_bytes=self.max_stdin_bytes,
                stdin_bytes=len(stdin),
            )
        env = dict(req.env)
        env.setdefault("PATH", DEFAULT_PATH)
        stdout = self._run(path, [str(real), *req.argv], env, stdin, req.timeout_ms)
        try:
            return orjson.loads(stdout)
        except orjson.JSONDecodeError:
            raise ExecError(
                "exec_stdout_invalid_json",
                "program stdout is not JSON",
                program_path=path,
                stdout_bytes=len(stdout),
            ) from None

    def _check_program(self, path: str) -> Path:
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(prefix) for prefix in self.allow):
            raise ExecError(
                "exec_program_not_allowed",
                "program is not under an allowed prefix"
                if self.allow
                else "exec is disabled (MFM_EXEC_ALLOW is empty)",
                program_path=path,
            )
        if not real.exists():
            raise ExecError("exec_program_missing", "program does not exist", program_path=path)
        if not real.is_file() or not os.access(real, os.X_OK):
            raise ExecError(
                "exec_program_not_executable",
                "program is not an executable file",
                program_path=path,
            )
        return real

    def _run(
        self, path: str, args: list[str], env: dict[str, str], stdin: bytes, timeout_ms: int
    ) -> bytes:
        deadline = time.monotonic() + timeout_ms / 1000
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecError(
                "exec_spawn_failed",
                "program could not be started",
                program_path=path,
                retryable=True,
                errno=exc.errno,
            ) from None
        try:
            stdout = self._pump(proc, path, stdin, deadline, timeout_ms)
            remaining = deadline - time.monotonic()
            try:
                returncode = proc.wait(timeout=max(remaining, 0))
            except subprocess.TimeoutExpired:
                raise self._timeout(path, timeout_ms) from None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        if returncode != 0:
            sig = -returncode if returncode < 0 else None
            raise ExecError(
                "exec_failed",
                f"program exited with code {returncode}"
                if sig is None
                else f"program was killed by signal {sig}",
                program_path=path,
                retryable=returncode == EX_TEMPFAIL,
                exit_code=returncode if sig is None else None,
                signal=sig,
                stdout_bytes=len(stdout),
            )
        return stdout

    def _timeout(self, path: str, timeout_ms: int) -> ExecError:
        return ExecError(
            "exec_timeout",
            f"program did not finish within {timeout_ms} ms",
            program_path=path,
            retryable=True,
            timeout_ms=timeout_ms,
        )

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        path: str,
        stdin: bytes,
        deadline: float,
        timeout_ms: int,
    ) -> bytes:
        """Write stdin and drain stdout/stderr until both close, within the deadline."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        out = bytearray()
        err_count = 0
        written = 0
        with selectors.DefaultSelector() as sel:
            if stdin:
                os.set_blocking(proc.stdin.fileno(), False)
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout(path, timeout_ms)
                for key, _ in sel.select(remaining):
                    fileobj = key.fileobj
                    if fileobj is proc.stdin:
                        try:
                            chunk = stdin[written : written + _CHUNK]
                            written += os.write(proc.stdin.fileno(), chunk)
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            written = len(stdin)  # the program stopped reading; its exit decides
                        if written >= len(stdin):
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, _CHUNK)
                    if not chunk:
                        sel.unregister(fileobj)
                        continue
                    if fileobj is proc.stdout:
                        out += chunk
                        if len(out) > self.max_stdout_bytes:
                            raise ExecError(
                                "exec_stdout_too_large",
                                "stdout exceeds the limit",
                                program_path=path,
                                limit_bytes=self.max_stdout_bytes,
                                stdout_bytes=len(out),
                            )
                    else:
                        err_count += len(chunk)  # stderr is counted, never kept
                        if err_count > self.max_stderr_bytes:
                            raise ExecError(
                                "exec_stderr_too_large",
                                "stderr exceeds the limit",
                                program_path=path,
                                limit_bytes=self.max_stderr_bytes,
                                stderr_bytes=err_count,
                            )
        return bytes(out)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the program and everything it spawned (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
