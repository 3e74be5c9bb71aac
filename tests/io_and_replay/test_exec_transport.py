"""The `exec` transport (docs/io-and-replay.md): allow-list, caps, one deadline, safe errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mfm_dist.errors import InvalidInput, MfmError
from mfm_dist.io.base import IoCall
from mfm_dist.io.live import LiveIo
from mfm_dist.io.router import TransportRegistry
from mfm_dist.io.transports.exec import ExecError, ExecTransport
from support.io_helpers import FactHarness, exec_request, wait_for_pid_exit, write_program

SECRET_OUTPUT = "leaky-output-7f3a"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


@pytest.fixture
def exec_t(allowed: Path) -> ExecTransport:
    return ExecTransport([str(allowed)])


def fail(transport: ExecTransport, request: object) -> ExecError:
    with pytest.raises(ExecError) as info:
        transport.call(request)
    text = str(info.value) + repr(info.value.info.model_dump())
    assert SECRET_OUTPUT not in text  # errors never carry output or payloads
    return info.value


# --- happy paths -----------------------------------------------------------------------------


def test_stdin_json_in_stdout_json_out(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "echo", "cat\n")
    payload = {"items": list(range(100)), "name": "x" * 400_000}  # > pipe buffers both ways
    assert exec_t.call(exec_request(prog, stdin_json=payload)) == payload


def test_argv_and_env_are_exactly_the_requested_ones(
    allowed: Path, exec_t: ExecTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFM_TEST_PARENT_VAR", "inherited")
    prog = write_program(
        allowed,
        "show",
        'printf \'{"a1":"%s","a2":"%s","foo":"%s","parent":"%s","has_path":"%s"}\' '
        '"$1" "$2" "$FOO" "$MFM_TEST_PARENT_VAR" "${PATH:+yes}"\n',
    )
    out = exec_t.call(exec_request(prog, argv=["one", "two words"], env={"FOO": "bar"}))
    assert out == {"a1": "one", "a2": "two words", "foo": "bar", "parent": "", "has_path": "yes"}


def test_a_symlink_inside_the_prefix_is_allowed(allowed: Path, exec_t: ExecTransport) -> None:
    real = write_program(allowed / "bin", "real", "echo '[1,2]'\n")
    (allowed / "link").symlink_to(real)
    assert exec_t.call(exec_request(allowed / "link")) == [1, 2]


# --- path policy -----------------------------------------------------------------------------


def test_paths_outside_the_prefix_are_not_allowed(tmp_path: Path, allowed: Path,
                                                   exec_t: ExecTransport) -> None:
    outside = write_program(tmp_path / "outside", "prog", "echo '{}'\n")
    evil_sibling = write_program(tmp_path / "allowed_evil", "prog", "echo '{}'\n")
    (allowed / "escape").symlink_to(outside)
    depth = len(allowed.parts) - 1
    candidates = [
        str(outside),
        str(evil_sibling),  # a string prefix match is not a component-wise match
        f"{allowed}/../outside/prog",
        str(allowed) + "/.." * depth + "/bin/sh",
        str(allowed / "escape"),
        "/bin/sh",
    ]
    for path in candidates:
        err = fail(exec_t, exec_request(path))
        assert err.code == "exec_program_not_allowed", path
        assert err.info.details == {"program_path": path}


def test_an_empty_allow_list_disables_exec(allowed: Path) -> None:
    prog = write_program(allowed, "ok", "echo '{}'\n")
    for transport in (ExecTransport([]), ExecTransport.from_env({"MFM_EXEC_ALLOW": ""}),
                      ExecTransport.from_env({})):
        assert fail(transport, exec_request(prog)).code == "exec_program_not_allowed"
        assert fail(transport, exec_request("/bin/true")).code == "exec_program_not_allowed"


def test_allow_list_from_env(tmp_path: Path, allowed: Path) -> None:
    prog = write_program(allowed, "ok", "echo '{\"ok\":true}'\n")
    transport = ExecTransport.from_env({"MFM_EXEC_ALLOW": f"/nonexistent::{allowed}"})
    assert transport.call(exec_request(prog)) == {"ok": True}
    with pytest.raises(InvalidInput) as info:
        ExecTransport.from_env({"MFM_EXEC_ALLOW": "relative/dir"})
    assert info.value.code == "exec_allow_invalid"


def test_missing_and_non_executable_programs(allowed: Path, exec_t: ExecTransport) -> None:
    assert fail(exec_t, exec_request(allowed / "nope")).code == "exec_program_missing"
    plain = write_program(allowed, "plain", "echo '{}'\n", mode=0o644)
    assert fail(exec_t, exec_request(plain)).code == "exec_program_not_executable"
    (allowed / "dir").mkdir()
    assert fail(exec_t, exec_request(allowed / "dir")).code == "exec_program_not_executable"


def test_spawn_failure_is_reported_without_output(allowed: Path, exec_t: ExecTransport) -> None:
    prog = allowed / "badinterp"
    prog.write_text("#!/nonexistent/interpreter\n")
    prog.chmod(0o755)
    err = fail(exec_t, exec_request(prog))
    assert err.code == "exec_spawn_failed"
    assert err.retryable is True


@pytest.mark.parametrize(
    "request_",
    [
        "not an object",
        {"program_path": "/x"},
        {"kind": "run_program_v2", "program_path": "/x"},
        {"kind": "run_program_v1", "program_path": "relative/prog"},
        {"kind": "run_program_v1", "program_path": "/x", "extra": "hunter2-value"},
        {"kind": "run_program_v1", "program_path": "/x", "env": {"K": 12}},
        {"kind": "run_program_v1", "program_path": "/x", "env": {"A=B": "hunter2-value"}},
        {"kind": "run_program_v1", "program_path": "/x", "argv": "hunter2-value"},
        {"kind": "run_program_v1", "program_path": "/x", "timeout_ms": 0},
        {"kind": "run_program_v1", "program_path": "/x", "timeout_ms": True},
    ],
)
def test_invalid_requests(exec_t: ExecTransport, request_: object) -> None:
    err = fail(exec_t, request_)
    assert err.code == "exec_request_invalid"
    assert "hunter2-value" not in str(err) + repr(err.info.model_dump())


# --- process outcomes ------------------------------------------------------------------------


def test_non_zero_exit_carries_only_safe_metadata(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "bad", f"echo '{SECRET_OUTPUT}'\necho '{SECRET_OUTPUT}' >&2\n"
                                          "exit 3\n")
    err = fail(exec_t, exec_request(prog, stdin_json={"payload": SECRET_OUTPUT}))
    assert err.code == "exec_failed"
    assert err.retryable is False
    details = err.info.details
    assert details["program_path"] == str(prog)
    assert details["exit_code"] == 3
    assert details["signal"] is None
    assert set(details) <= {"program_path", "exit_code", "signal", "stdout_bytes"}


def test_exit_75_is_retryable(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "tempfail", "exit 75\n")
    err = fail(exec_t, exec_request(prog))
    assert (err.code, err.retryable, err.info.details["exit_code"]) == ("exec_failed", True, 75)


def test_killed_by_signal(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "selfkill", "kill -TERM $$\n")
    err = fail(exec_t, exec_request(prog))
    assert err.code == "exec_failed"
    assert err.info.details["signal"] == 15
    assert err.info.details["exit_code"] is None


def test_timeout_kills_the_whole_process_group(tmp_path: Path, allowed: Path,
                                               exec_t: ExecTransport) -> None:
    pidfile = tmp_path / "child.pid"
    prog = write_program(allowed, "hang", f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    err = fail(exec_t, exec_request(prog, timeout_ms=500))
    assert err.code == "exec_timeout"
    assert err.retryable is True
    assert err.info.details == {"program_path": str(prog), "timeout_ms": 500}
    assert wait_for_pid_exit(int(pidfile.read_text()))


def test_one_deadline_covers_writing_a_large_stdin(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "noread", "sleep 60\n")
    big = "x" * 900_000  # far more than a pipe buffer; the program never reads it
    err = fail(exec_t, exec_request(prog, stdin_json=big, timeout_ms=400))
    assert err.code == "exec_timeout"


def test_program_that_ignores_stdin_and_exits_is_fine(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "ignore", "exec 0<&-\necho '{\"ok\":1}'\n")
    assert exec_t.call(exec_request(prog, stdin_json="y" * 900_000)) == {"ok": 1}


# --- caps and output -------------------------------------------------------------------------


def test_default_caps_are_one_mib() -> None:
    t = ExecTransport([])
    assert (t.max_stdin_bytes, t.max_stdout_bytes, t.max_stderr_bytes) == (1 << 20,) * 3


def test_stdin_cap_rejects_before_spawning(tmp_path: Path, allowed: Path) -> None:
    marker = tmp_path / "ran"
    prog = write_program(allowed, "mark", f"touch {marker}\ncat\n")
    t = ExecTransport([str(allowed)], max_stdin_bytes=100)
    err = fail(t, exec_request(prog, stdin_json="z" * 200))
    assert err.code == "exec_stdin_too_large"
    assert err.info.details == {"program_path": str(prog), "limit_bytes": 100, "stdin_bytes": 202}
    assert not marker.exists()


def test_stdout_cap(allowed: Path) -> None:
    prog = write_program(allowed, "flood", "head -c 500000 /dev/zero\n")
    err = fail(ExecTransport([str(allowed)], max_stdout_bytes=1000), exec_request(prog))
    assert err.code == "exec_stdout_too_large"
    assert err.info.details["limit_bytes"] == 1000
    assert err.info.details["stdout_bytes"] > 1000


def test_stderr_cap(allowed: Path) -> None:
    prog = write_program(allowed, "noisy", "head -c 500000 /dev/zero >&2\necho '{}'\n")
    err = fail(ExecTransport([str(allowed)], max_stderr_bytes=1000), exec_request(prog))
    assert err.code == "exec_stderr_too_large"
    assert err.info.details["limit_bytes"] == 1000
    assert err.info.details["stderr_bytes"] > 1000


def test_stderr_within_the_cap_is_discarded(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "warn", f"echo '{SECRET_OUTPUT}' >&2\necho '[true]'\n")
    assert exec_t.call(exec_request(prog)) == [True]


def test_invalid_json_stdout(allowed: Path, exec_t: ExecTransport) -> None:
    prog = write_program(allowed, "text", f"echo 'hello {SECRET_OUTPUT}'\n")
    err = fail(exec_t, exec_request(prog))
    assert err.code == "exec_stdout_invalid_json"
    assert err.info.details == {"program_path": str(prog),
                                "stdout_bytes": len(f"hello {SECRET_OUTPUT}\n")}
    empty = write_program(allowed, "silent", "true\n")
    assert fail(exec_t, exec_request(empty)).code == "exec_stdout_invalid_json"


# --- through LiveIo --------------------------------------------------------------------------


def test_keyed_exec_call_runs_the_program_once(tmp_path: Path, allowed: Path) -> None:
    counter = tmp_path / "runs"
    prog = write_program(allowed, "count", f"echo x >> {counter}\necho '{{\"n\":7}}'\n")
    reg = TransportRegistry()
    reg.register("exec", ExecTransport([str(allowed)]))
    h = FactHarness()
    call = IoCall(namespace="exec.tools", request=exec_request(prog), fact_key="tool:n")
    h.begin_attempt()
    first = asyncio.run(LiveIo(h.scope(), reg).call(call))
    h.begin_attempt()
    second = asyncio.run(LiveIo(h.scope(), reg).call(call))
    assert first.response == second.response == {"n": 7}
    assert second.replayed is True
    assert counter.read_text().count("x") == 1
    stored = h.all_stored_bytes()
    assert str(prog).encode() not in stored  # the request is never persisted


def test_exec_errors_are_mfm_errors(allowed: Path, exec_t: ExecTransport) -> None:
    with pytest.raises(MfmError) as info:
        exec_t.call(exec_request(allowed / "missing"))
    assert info.value.to_shape()["Io"]["Transport"]["code"] == "exec_program_missing"
