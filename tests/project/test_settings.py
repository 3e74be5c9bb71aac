"""Configuration is read once, where a program starts, and passed down (docs/configuration.md):
no library module reads the environment; settings parse every variable (bad values are
`settings_invalid`, naming the variable and never echoing the value); a password file is
read into the settings, never into `os.environ`; no repr shows a secret; and the CLI's
cluster commands hand their settings to the cluster code instead of writing `os.environ`."""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from mfm_dist.cli.main import cli
from mfm_dist.errors import InvalidInput
from mfm_dist.io.router import TransportRegistry
from mfm_dist.manifest import current_build_info
from mfm_dist.operations import OperationRegistry
from mfm_dist.settings import (
    Provenance,
    RedisCredentials,
    S3Credentials,
    Settings,
    SettingsError,
    TransportSettings,
)
from mfm_dist.stores.urls import open_stores
from support import REPO
from support.worker_harness import Harness
from workers.boot import _worker_boot
from workers.factory import create_app
from workers.runtime import configure, process_settings
from workers.settings import DEFAULT_REDIS, ClusterSettings

ROOT = REPO

# -- where the environment is read ----------------------------------------------------------------

ENVIRONMENT_READERS = {
    "mfm_dist/settings.py": "Settings.from_env: the one parser of the library's variables",
    "workers/settings.py": "ClusterSettings.from_env: the cluster's variables, same mapping",
    "mfm_dist/cli/app.py": "the CLI's entry point reads the environment once",
    "workers/metrics.py": "PROMETHEUS_MULTIPROC_DIR: prometheus_client's own variable, which "
    "it reads from the process environment and pool children inherit",
}
"""The only modules that touch `os.environ` (or `os.getenv`, …), and why."""

ENV_DEFAULTS = {
    ("workers/app.py", "<module>"): "the worker boot (`celery -A workers.app`)",
    ("mfm_dist/stores/urls.py", "open_stores"): "public entry point: settings=None",
    ("mfm_dist/operations.py", "OperationRegistry.default"): "public entry point: settings=None",
    ("mfm_dist/api.py", "_read_once"): "mfm_dist.run/resume/cancel: settings=None",
    ("workers/runtime.py", "process_settings"): "submit_run/wait_for_run without a runtime",
}
"""The only places that call `X.from_env()` without a mapping (which reads the process
environment): program starts and the documented defaults of public entry points."""

OS_ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def package_modules() -> list[Path]:
    return sorted(p for pkg in ("mfm_dist", "workers") for p in (ROOT / pkg).rglob("*.py"))


class _Scan(ast.NodeVisitor):
    """Collects environment reads and argument-less `from_env()` calls, by scope."""

    def __init__(self) -> None:
        self.env_uses: list[int] = []
        self.from_env_calls: list[tuple[str, int]] = []
        self._scope: list[str] = []

    def _enter(self, node: ast.AST, name: str) -> None:
        self._scope.append(name)
        self.generic_visit(node)
        self._scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._enter(node, node.name)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._enter(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._enter(node, node.name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        is_os = isinstance(node.value, ast.Name) and node.value.id == "os"
        if is_os and node.attr in OS_ENV_NAMES:
            self.env_uses.append(node.lineno)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "os" and any(a.name in OS_ENV_NAMES for a in node.names):
            self.env_uses.append(node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "from_env"
            and not node.args
            and not node.keywords
        ):
            self.from_env_calls.append((".".join(self._scope) or "<module>", node.lineno))
        self.generic_visit(node)


def scans() -> dict[str, _Scan]:
    out = {}
    for path in package_modules():
        scan = _Scan()
        scan.visit(ast.parse(path.read_text(), str(path)))
        out[path.relative_to(ROOT).as_posix()] = scan
    return out


def test_only_the_entry_points_read_the_environment() -> None:
    found = scans()
    readers = {name for name, scan in found.items() if scan.env_uses}
    assert readers <= set(ENVIRONMENT_READERS), {
        name: found[name].env_uses for name in sorted(readers - set(ENVIRONMENT_READERS))
    }
    assert "mfm_dist/settings.py" in readers and "mfm_dist/cli/app.py" in readers
    defaults = {
        (name, scope) for name, scan in found.items() for scope, _ in scan.from_env_calls
    }
    assert defaults <= set(ENV_DEFAULTS), sorted(defaults - set(ENV_DEFAULTS))
    assert defaults == set(ENV_DEFAULTS), "a documented entry point no longer reads: update"


def test_the_scan_sees_every_way_of_reading() -> None:
    code = (
        "import os\nfrom os import getenv\n"
        "def f():\n    return os.environ.get('X'), os.getenv('Y'), Settings.from_env()\n"
        "class C:\n    def m(self):\n        return Settings.from_env({})\n"
    )
    scan = _Scan()
    scan.visit(ast.parse(code))
    assert scan.env_uses == [2, 4, 4]
    assert scan.from_env_calls == [("f", 4)]


# -- parsing ---------------------------------------------------------------------------------------


def test_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().store_urls() == (
        f"sqlite://{Path('.mfm').absolute() / 'events.sqlite3'}",
        f"file://{Path('.mfm').absolute() / 'artifacts'}",
    )
    cluster = ClusterSettings.from_env({})
    assert cluster == ClusterSettings()
    assert cluster.broker_url == cluster.result_backend == cluster.events_url == DEFAULT_REDIS
    assert cluster.artifacts_url is None
    assert (cluster.lease_ttl_s, cluster.lock_ttl_s, cluster.watchdog_s) == (10.0, 10.0, 11.0)
    assert cluster.max_state_timeout_ms == 3_600_000 and cluster.metrics_port == 0


def test_every_library_variable(tmp_path: Path) -> None:
    environ = {
        "MFM_HOME": str(tmp_path / "home"),
        "MFM_EVENTS_URL": "redis://127.0.0.1:7000/3",
        "MFM_ARTIFACTS_URL": "s3://bucket/prefix?endpoint=http://127.0.0.1:9000",
        "MFM_OPERATIONS": " my_ops , , other_ops",
        "MFM_REDIS_USERNAME": "mfm",
        "MFM_REDIS_PASSWORD": "redis-pw",
        "MFM_S3_ACCESS_KEY": "access",
        "MFM_S3_SECRET_KEY": "s3-secret",
        "MFM_S3_SESSION_TOKEN": "s3-token",
        "AWS_ACCESS_KEY_ID": "ignored-when-mfm-keys-are-set",
        "MFM_EXEC_ALLOW": "/opt/tools:/usr/local/libexec",
        "MFM_HTTP_ALLOW_HOSTS": "api.example.com,127.0.0.1:8000",
        "MFM_GIT_COMMIT": "f" * 40,
        "MFM_ENV_ALLOWLIST": "B, A",
    }
    s = Settings.from_env(environ)
    assert s.home == tmp_path / "home"
    assert s.store_urls() == (environ["MFM_EVENTS_URL"], environ["MFM_ARTIFACTS_URL"])
    assert s.operations == ("my_ops", "other_ops")
    assert s.redis == RedisCredentials("mfm", SecretStr("redis-pw"))
    assert s.s3 == S3Credentials("access", SecretStr("s3-secret"), SecretStr("s3-token"))
    assert s.transports == TransportSettings(
        "/opt/tools:/usr/local/libexec", "api.example.com,127.0.0.1:8000"
    )
    assert s.provenance == Provenance("f" * 40, ("B", "A"))
    aws = Settings.from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert aws.s3 == S3Credentials("a", SecretStr("b"), None)


def test_every_cluster_variable() -> None:
    environ = {
        "MFM_BROKER_URL": "redis://broker:6379/1",
        "MFM_RESULT_BACKEND": "redis://results:6379/2",
        "MFM_EVENTS_URL": "redis://events:6379/0",
        "MFM_ARTIFACTS_URL": "s3://b/p?endpoint=http://s3:9000",
        "MFM_CONTROL_QUEUE": "c",
        "MFM_ATTEMPT_QUEUE": "a",
        "MFM_SUBMIT_QUEUE": "s",
        "MFM_DEFAULT_QUEUE": "",
        "MFM_VISIBILITY_TIMEOUT_S": "7200",
        "MFM_LEASE_TTL_S": "4",
        "MFM_DISPATCH_TIMEOUT_S": "30",
        "MFM_LOCK_TTL_S": "6",
        "MFM_WATCHDOG_S": "9",
        "MFM_TIMER_POLL_S": "0.5",
        "MFM_INLINE_COORDINATION": "off",
        "MFM_MAX_STATE_TIMEOUT_S": "0",
        "MFM_ARTIFACT_CACHE_TTL_S": "0",
        "MFM_WORKER_MAX_TASKS_PER_CHILD": "0",
        "MFM_TIMING": "yes",
        "MFM_TASK_EVENTS": "1",
        "MFM_METRICS_PORT": "9808",
        "MFM_METRICS_ADDR": "0.0.0.0",
        "MFM_BACKFILL_POLL_S": "1.5",
        "MFM_OPERATIONS": "support.dist_ops",
    }
    c = ClusterSettings.from_env(environ)
    assert c.core == Settings.from_env(environ)  # one mapping, one reading
    assert (c.broker_url, c.result_backend) == ("redis://broker:6379/1", "redis://results:6379/2")
    assert c.events_url == environ["MFM_EVENTS_URL"]
    assert c.artifacts_url == environ["MFM_ARTIFACTS_URL"]
    assert (c.control_queue, c.attempt_queue, c.submit_queue) == ("c", "a", "s")
    assert c.default_queue == ""  # set but empty: no default queue
    assert (c.visibility_timeout_s, c.lease_ttl_s, c.dispatch_timeout_s) == (7200.0, 4.0, 30.0)
    assert (c.lock_ttl_s, c.watchdog_s, c.timer_poll_s) == (6.0, 9.0, 0.5)
    assert c.inline_coordination is False and c.timing is True and c.task_events is True
    assert c.max_state_timeout_ms is None and c.artifact_cache_ttl_s == 0
    assert c.max_tasks_per_child == 0 and c.lease_ttl_ms == 4000
    assert (c.metrics_port, c.metrics_addr, c.backfill_poll_s) == (9808, "0.0.0.0", 1.5)
    derived = ClusterSettings.from_env({"MFM_LEASE_TTL_S": "3"})
    assert (derived.lock_ttl_s, derived.watchdog_s) == (3.0, 4.0)  # follow the lease TTL


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MFM_LEASE_TTL_S", "soon"),
        ("MFM_LEASE_TTL_S", "0"),
        ("MFM_LEASE_TTL_S", "-1"),
        ("MFM_VISIBILITY_TIMEOUT_S", "nan"),
        ("MFM_DISPATCH_TIMEOUT_S", "inf"),
        ("MFM_MAX_STATE_TIMEOUT_S", "-0.5"),
        ("MFM_ARTIFACT_CACHE_TTL_S", "1.5"),
        ("MFM_WORKER_MAX_TASKS_PER_CHILD", "-3"),
        ("MFM_METRICS_PORT", "65536"),
        ("MFM_TIMING", "maybe"),
        ("MFM_INLINE_COORDINATION", "2"),
        ("MFM_REDIS_PASSWORD_FILE", "/nonexistent/mfm-redis-password"),
    ],
)
def test_an_invalid_value_is_settings_invalid_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError) as info:
        ClusterSettings.from_env({variable: value})
    err = info.value
    assert isinstance(err, InvalidInput) and not isinstance(err, ValueError)
    assert err.code == "settings_invalid"
    assert err.info.details == {"variable": variable} and err.variable == variable
    shown_name = variable.replace("PASSWORD", "*")  # a secret marker, masked in messages
    assert str(err).startswith(f"settings_invalid: {shown_name} ")
    assert value not in err.info.message


def test_an_invalid_setting_is_one_error_line_from_the_cli(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["--home", str(tmp_path), "runs"],
        env={"MFM_REDIS_PASSWORD_FILE": str(tmp_path / "missing")},
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error[settings_invalid]: MFM_REDIS_*_FILE names a file")


# -- secrets ---------------------------------------------------------------------------------------


def test_a_password_file_is_read_into_the_settings_never_into_os_environ(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("from-a-file\n")
    before = dict(os.environ)
    environ = {"MFM_REDIS_PASSWORD_FILE": str(secret), "MFM_BROKER_URL": "redis://broker:1/1"}
    cluster = ClusterSettings.from_env(environ)
    assert cluster.core.redis.password == SecretStr("from-a-file")
    assert cluster.broker_url == "redis://:from-a-file@broker:1/1"
    assert sorted(environ) == ["MFM_BROKER_URL", "MFM_REDIS_PASSWORD_FILE"]  # unchanged
    assert dict(os.environ) == before
    # The variable wins over the file; an empty file is no password.
    both = {"MFM_REDIS_PASSWORD": "direct", "MFM_REDIS_PASSWORD_FILE": str(secret)}
    assert Settings.from_env(both).redis.password == SecretStr("direct")
    secret.write_text("\n")
    assert Settings.from_env({"MFM_REDIS_PASSWORD_FILE": str(secret)}).redis.password is None


def test_credentials_apply_only_to_urls_without_their_own() -> None:
    creds = RedisCredentials("mfm", SecretStr("p@ss word"))
    assert creds.apply("redis://h:1/0") == "redis://mfm:p%40ss%20word@h:1/0"
    assert creds.apply("redis://u:own@h:1/0") == "redis://u:own@h:1/0"
    assert creds.apply("amqp://h//") == "amqp://h//"
    assert creds.client_kwargs("redis://h:1/0") == {"password": "p@ss word", "username": "mfm"}
    assert creds.client_kwargs("redis://:own@h:1/0") == {}
    assert RedisCredentials().client_kwargs("redis://h:1/0") == {}


def test_no_repr_shows_a_secret(tmp_path: Path) -> None:
    secrets = ["redis-pw-1234", "url-pw-5678", "s3-secret-9012", "s3-token-3456", "broker-pw-7890"]
    environ = {
        "MFM_REDIS_PASSWORD": secrets[0],
        "MFM_EVENTS_URL": f"redis://user:{secrets[1]}@events:6379/0",
        "MFM_ARTIFACTS_URL": f"s3://b/p?endpoint=http://s3:9000&secret_key={secrets[2]}",
        "MFM_S3_ACCESS_KEY": "access",
        "MFM_S3_SECRET_KEY": secrets[2],
        "MFM_S3_SESSION_TOKEN": secrets[3],
        "MFM_BROKER_URL": f"redis://:{secrets[4]}@broker:6379/1",
    }
    cluster = ClusterSettings.from_env(environ)
    for shown in (repr(cluster), str(cluster), repr(cluster.core), str(cluster.core),
                  repr(cluster.core.redis), repr(cluster.core.s3)):  # fmt: skip
        for secret in secrets:
            assert secret not in shown, shown
    assert "events:6379" in repr(cluster.core) and "broker:6379" in repr(cluster)
    assert cluster.broker_url == environ["MFM_BROKER_URL"]  # what Celery gets is intact


# -- passing the settings down ---------------------------------------------------------------------


def test_library_functions_take_the_settings_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFM_HOME", str(tmp_path / "from-the-environment"))
    monkeypatch.setenv("MFM_GIT_COMMIT", "e" * 40)
    monkeypatch.setenv("MFM_EXEC_ALLOW", "/bin")
    chosen = Settings(home=tmp_path / "chosen", provenance=Provenance("c" * 40, ("X",)))
    stores = open_stores(settings=chosen)
    try:
        assert stores.events.url.startswith(f"sqlite://{tmp_path / 'chosen'}")
    finally:
        stores.close()
    assert not (tmp_path / "from-the-environment").exists()
    registry = OperationRegistry.default(settings=chosen)
    assert registry.build_info().git_commit == "c" * 40
    assert registry.build_info().env_allowlist == ["X"]
    assert current_build_info(provenance=chosen.provenance).git_commit == "c" * 40
    exec_transport = registry.build_transports().resolve("exec")
    assert exec_transport.allow == []  # type: ignore[attr-defined]  # MFM_EXEC_ALLOW: not read
    configured = TransportRegistry.default(TransportSettings(exec_allow="/bin"))
    assert configured.resolve("exec").allow == [Path(os.path.realpath("/bin"))]  # type: ignore[attr-defined]
    # The documented public entry points read the environment when given no settings.
    assert OperationRegistry.default().build_info().git_commit == "e" * 40


def test_apps_and_runtimes_are_built_from_explicit_settings() -> None:
    one = ClusterSettings(broker="redis://one:1/1", control_queue="ctl-one")
    two = ClusterSettings(broker="redis://two:2/2", task_events=True)
    app_one, app_two = create_app(one), create_app(two)
    assert app_one.conf.broker_url == "redis://one:1/1"
    assert app_two.conf.broker_url == "redis://two:2/2"
    assert app_one.conf.task_routes["mfm.advance"] == {"queue": "ctl-one"}
    assert (app_one.conf.worker_send_task_events, app_two.conf.worker_send_task_events) == (
        False,
        True,
    )
    # A worker's process runtime is bound to the settings of the app it runs.
    try:
        _worker_boot(instance=SimpleNamespace(app=app_two))
        assert process_settings() is two
    finally:
        configure(None)


def test_cli_cluster_commands_pass_settings_and_leave_os_environ_alone(
    h: Harness,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stores come from the command line only (not the environment): the cluster code
    gets them as settings — a run is recorded there and its wake-up sent — and
    `os.environ` is exactly as before."""
    events_url, artifacts_url = os.environ["MFM_EVENTS_URL"], os.environ["MFM_ARTIFACTS_URL"]
    monkeypatch.delenv("MFM_EVENTS_URL")
    monkeypatch.delenv("MFM_ARTIFACTS_URL")
    stores = ["--events-url", events_url, "--artifacts-url", artifacts_url]
    before = dict(os.environ)

    def mfm(*args: str) -> str:
        result = CliRunner().invoke(cli, [*stores, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert dict(os.environ) == before
        return result.stdout

    import json

    run_id = json.loads(mfm("submit", "chain_demo", "--input", '{"states": 1}', "--json"))["run_id"]
    assert h.rt.events.head_seq(run_id) >= 2
    assert h.dispatcher.advances == [run_id]
    mfm("resume", run_id, "--cluster", "--json")
    assert h.dispatcher.advances == [run_id, run_id]
    mfm("cancel", run_id, "--cluster", "--no-wait", "--json")
    assert h.dispatcher.advances == [run_id] * 3
    assert h.rt.events.read_range(run_id)[-1].event.__class__.__name__ == "DomainEvent"


def test_build_info_is_computed_once_per_process_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker accepting many submissions asks `git` once, not once per manifest."""
    import subprocess


    calls: list[object] = []
    real_run = subprocess.run

    def counting_run(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real_run(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", counting_run)
    (tmp_path / "uv.lock").write_text("locked\n")
    first = [current_build_info(tmp_path) for _ in range(5)]
    assert len(calls) == 1 and all(b == first[0] for b in first)
    assert first[0].cargo_lock_hash == hashlib.sha256(b"locked\n").hexdigest()
    # Another directory, or a commit given by the settings, is its own entry.
    other = tmp_path / "other"
    other.mkdir()
    assert current_build_info(other).cargo_lock_hash is None
    given = current_build_info(tmp_path, Provenance("d" * 40, ("A", "B")))
    assert given.git_commit == "d" * 40 and given.env_allowlist == ["A", "B"]
    assert len(calls) == 2
