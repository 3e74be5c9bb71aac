"""Refused Redis credentials or permissions fail at once with `storage_auth_failed`: never
retried (neither by the event store nor by the workers' client), never called transient, and
the secret is never echoed. Against a real redis-server started with `requirepass`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from mfm_dist.cli.main import cli
from mfm_dist.errors import StorageError
from mfm_dist.stores.redis_events import RedisEventStore
from support.servers import RedisServer
from workers.faults import is_permanent_storage_fault, is_transient
from workers.runtime import redis_client

ADMIN_SECRET = "admin-s3cret-value"
WRONG_SECRET = "wrong-s3cret-value"
READER_SECRET = "reader-s3cret-value"


@pytest.fixture
def locked_redis(redis_factory: Callable[..., RedisServer]) -> RedisServer:
    server = redis_factory(requirepass=ADMIN_SECRET)
    admin = admin_client(server)
    try:
        # A user that may do everything except list runs (ZREVRANGE): NOPERM on `mfm runs`.
        admin.acl_setuser(
            "reader",
            enabled=True,
            passwords=[f"+{READER_SECRET}"],
            categories=["+@all"],
            commands=["-zrevrange"],
            keys=["*"],
            channels=["*"],
        )
        admin.acl_log_reset()
    finally:
        admin.close()
    return server


def admin_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=ADMIN_SECRET)


def failed_auths(server: RedisServer) -> int:
    """How many AUTH attempts the server refused (its ACL log counts repeats)."""
    admin = admin_client(server)
    try:
        entries = admin.acl_log()
    finally:
        admin.close()
    refused = 0
    for entry in entries:
        if entry["reason"] == "auth":
            count = entry["count"]
            assert isinstance(count, int | str), entry
            refused += int(count)
    return refused


def mfm(tmp_path: Path, url: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--home", str(tmp_path / "home"), "--events-url", url, *args], catch_exceptions=False
    )


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_wrong_password_fails_at_once_and_is_not_echoed(
    locked_redis: RedisServer, tmp_path: Path
) -> None:
    url = f"redis://:{WRONG_SECRET}@127.0.0.1:{locked_redis.port}/0"
    result = mfm(tmp_path, url, "runs")
    assert result.exit_code == 3, result.output
    line = one_error_line(result)
    assert line.startswith("error[storage_auth_failed]: ")
    assert "refused the credentials" in line and "not retried" in line
    assert f"127.0.0.1:{locked_redis.port}" in line  # names the (redacted) store
    assert WRONG_SECRET not in result.output + result.stderr
    assert failed_auths(locked_redis) == 1  # one AUTH, not six (no retry with backoff)


def test_missing_password_and_wrong_env_password(
    locked_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = f"redis://127.0.0.1:{locked_redis.port}/0"
    missing = mfm(tmp_path, plain, "status", "00000000-0000-4000-8000-000000000000")
    assert missing.exit_code == 3
    assert one_error_line(missing).startswith("error[storage_auth_failed]: ")  # NOAUTH

    monkeypatch.setenv("MFM_REDIS_PASSWORD", WRONG_SECRET)
    from_env = mfm(tmp_path, plain, "runs")
    assert from_env.exit_code == 3
    assert one_error_line(from_env).startswith("error[storage_auth_failed]: ")
    assert WRONG_SECRET not in from_env.output + from_env.stderr
    assert failed_auths(locked_redis) == 1

    monkeypatch.setenv("MFM_REDIS_PASSWORD", ADMIN_SECRET)
    allowed = mfm(tmp_path, plain, "runs", "--json")
    assert allowed.exit_code == 0, allowed.output
    assert allowed.stdout == "[]\n"


def test_missing_permission_is_an_auth_failure(locked_redis: RedisServer, tmp_path: Path) -> None:
    url = f"redis://reader:{READER_SECRET}@127.0.0.1:{locked_redis.port}/0"
    result = mfm(tmp_path, url, "runs")
    assert result.exit_code == 3
    line = one_error_line(result)
    assert line.startswith("error[storage_auth_failed]: ")
    assert "denied the permission to run ZREVRANGE" in line
    assert READER_SECRET not in result.output + result.stderr and "reader" not in line


def test_auth_failures_are_neither_transient_nor_the_runs_fault(
    locked_redis: RedisServer,
) -> None:
    store = RedisEventStore.from_url(
        f"redis://:{WRONG_SECRET}@127.0.0.1:{locked_redis.port}/0", retries=5
    )
    try:
        with pytest.raises(StorageError) as caught:
            store.list_runs()
    finally:
        store.close()
    err = caught.value
    assert err.info.code == "storage_auth_failed"
    assert err.info.category.value == "Storage" and err.info.retryable is False
    # The store raises `from None`, but the redis AuthenticationError is still its context.
    assert isinstance(err.__context__, redis.AuthenticationError)
    assert not is_transient(err) and not is_permanent_storage_fault(err)
    assert not is_transient(err.__context__)
    assert failed_auths(locked_redis) == 1

    reader = redis.Redis(
        host="127.0.0.1", port=locked_redis.port, username="reader", password=READER_SECRET
    )
    try:
        with pytest.raises(redis.exceptions.NoPermissionError) as denied:
            reader.zrevrange("mfm:runs", 0, -1)
    finally:
        reader.close()
    assert not is_transient(denied.value)
    # Still transient: a plain connection fault.
    assert is_transient(redis.ConnectionError("connection reset"))


def test_worker_client_does_not_retry_refused_credentials(locked_redis: RedisServer) -> None:
    wrong = redis_client(f"redis://:{WRONG_SECRET}@127.0.0.1:{locked_redis.port}/0")
    try:
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
    finally:
        wrong.close()
    assert failed_auths(locked_redis) == 1  # the default retry policy sends AUTH again

    right = redis_client(f"redis://:{ADMIN_SECRET}@127.0.0.1:{locked_redis.port}/0")
    try:
        assert right.ping() is True
    finally:
        right.close()
