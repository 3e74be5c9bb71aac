"""Real Redis and S3 (moto) servers for tests, on free loopback ports.

The fixtures are available to every test: pyproject's pytest `addopts` loads this module
as a plugin (`-p servers`, with `tests/` on the `pythonpath`).

* `redis_server` (session): one `redis-server` without persistence.
* `redis_url` (function): `redis://127.0.0.1:PORT/DB` on that server, with the
  database flushed first, so every test starts empty.
* `redis_factory` (function): `redis_factory(appendonly=True, appendfsync="always")`
  starts a private server (for tests that stop, kill or restart it, or that need
  `requirepass="…"`); all are stopped at teardown.
* `s3_server` (session): `python -m moto.server` in a subprocess.
* `s3_artifacts_url` (function): `s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:PORT`
  for a fresh bucket. Credentials come from the environment, never from the URL:
  the fixture sets `MFM_S3_ACCESS_KEY` / `MFM_S3_SECRET_KEY` (moto accepts any).
* `s3_factory` (function): private moto servers that a test may stop and restart.

Servers are stopped reliably: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

S3_ACCESS_ENV = "MFM_S3_ACCESS_KEY"
S3_SECRET_ENV = "MFM_S3_SECRET_KEY"
TEST_S3_ACCESS = "testing"
TEST_S3_SECRET = "testing"  # moto accepts any credentials


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop_process(proc: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    delay = 0.02
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early with code {proc.returncode}")
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    _stop_process(proc, kill=True)
    raise RuntimeError(f"{what} not ready within {READY_TIMEOUT_S}s")


# --- Redis -----------------------------------------------------------------------------------


class RedisServer:
    """A `redis-server` child process on a loopback port with its own data dir.

    `restart()` keeps the port and the data dir, so an AOF written before a stop
    (or a SIGKILL) is what the restarted server loads.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        data_dir: Path | None = None,
        port: int | None = None,
        requirepass: str | None = None,
    ) -> None:
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.requirepass = requirepass
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="mfm-redis-"))
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _argv(self) -> list[str]:
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.appendonly:
            argv += ["--appendfsync", self.appendfsync]
        if self.requirepass is not None:
            argv += ["--requirepass", self.requirepass]
        return argv

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                # With requirepass a ready server answers PING with -NOAUTH.
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def start(self) -> RedisServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_until(self._ping, self.proc, f"redis-server on port {self.port}")
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown) or, with `kill`, SIGKILL (a crash)."""
        _stop_process(self.proc, kill=kill)
        self.proc = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


_db_numbers = itertools.cycle(range(16))


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A flushed database of the session server (databases are reused round-robin)."""
    import redis

    db = next(_db_numbers)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=db)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url_for_db(db)


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers (`appendonly`, `appendfsync`) that a test may stop or kill."""
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs).start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.cleanup()


# --- S3 (moto) ---------------------------------------------------------------------------------


class S3Server:
    """moto's standalone S3 server in a subprocess (state is in memory: a restart empties it)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, bucket: str, prefix: str = "") -> str:
        path = f"{bucket}/{prefix}" if prefix else bucket
        return f"s3://{path}?endpoint={self.endpoint}"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=0.5) as resp:
                return int(resp.status) < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def start(self) -> S3Server:
        if self.proc is not None and self.proc.poll() is None:
            return self
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=TEST_S3_ACCESS, AWS_SECRET_ACCESS_KEY=TEST_S3_SECRET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        _wait_until(self._ready, self.proc, f"moto server on port {self.port}")
        return self

    def stop(self, *, kill: bool = False) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # moto may spawn helpers: signal the whole (own) process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        _stop_process(proc, kill=kill)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> Any:
        """A raw `minio.Minio` client (for creating buckets or tampering in tests)."""
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=TEST_S3_ACCESS,
            secret_key=TEST_S3_SECRET,
            secure=False,
            region="us-east-1",
        )

    def create_bucket(self, bucket: str) -> None:
        client = self.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def new_bucket_name() -> str:
    return f"mfm-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put test credentials where the S3 artifact store reads them: the environment."""
    monkeypatch.setenv(S3_ACCESS_ENV, TEST_S3_ACCESS)
    monkeypatch.setenv(S3_SECRET_ENV, TEST_S3_SECRET)


@pytest.fixture
def s3_artifacts_url(s3_server: S3Server, s3_credentials: None) -> str:
    """A fresh bucket on the session moto server, as an `s3://` artifact store URL."""
    bucket = new_bucket_name()
    s3_server.create_bucket(bucket)
    return s3_server.url_for(bucket, "artifacts")


@pytest.fixture
def s3_factory(s3_credentials: None) -> Iterator[Callable[[], S3Server]]:
    """Start private moto servers that a test may stop and restart."""
    servers: list[S3Server] = []

    def make() -> S3Server:
        server = S3Server().start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
