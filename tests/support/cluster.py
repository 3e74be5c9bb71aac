"""A real local cluster for tests and benchmarks: redis-server (AOF, `noeviction`), the
SeaweedFS S3 server behind a switchable TCP proxy, and real `celery -A workers.app worker`
subprocesses (prefork pool).

    with LocalCluster(root, attempt_workers=2) as cluster:
        cluster.activate()          # point this process's runtime at it
        run_id = submit_run(...)

Workers are process-group leaders, so stopping one reliably stops its pool children;
`kill_pid` SIGKILLs one pool child (a worker lost mid-attempt). `s3_proxy.disable()`
makes S3 unreachable while the server keeps running (and its data).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from support import REPO, TESTS
from support.servers import (
    S3_ACCESS_ENV,
    S3_SECRET_ENV,
    TEST_S3_ACCESS,
    TEST_S3_SECRET,
    RedisServer,
    S3Server,
    free_port,
)
from workers.settings import ClusterSettings

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class TcpProxy:
    """Forwards a loopback port to another; `disable()` drops every connection and refuses
    new ones until `enable()` (an S3 outage that keeps the server's data); `stall()` holds
    every byte in flight until `resume()` (a server that hangs without refusing)."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._flowing = threading.Event()
        self._flowing.set()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def enable(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self._listener = sock
        self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._listener is not None

    def disable(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._flowing.wait()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


class Worker:
    def __init__(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        logfile: Path,
        spec: dict[str, Any],
        log_offset: int = 0,
    ) -> None:
        self.name = name
        self.proc = proc
        self.logfile = logfile
        self.spec = spec
        self.restarts = 0
        self.log_offset = log_offset
        """Size of the (shared, appended) log file when this process started."""

    def ready(self) -> bool:
        """This process is alive and has logged ` ready.` since it started."""
        if not self.alive():
            return False
        try:
            with open(self.logfile, "rb") as fh:
                fh.seek(self.log_offset)
                return b" ready." in fh.read()
        except OSError:
            return False

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        # Pool children left behind by a killed parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class LocalCluster:
    def __init__(
        self,
        root: Path,
        *,
        attempt_workers: int = 2,
        attempt_concurrency: int = 1,
        lease_ttl_s: float = 3.0,
        visibility_timeout_s: float = 30.0,
        appendfsync: str = "always",
        operations: str = "support.dist_ops",
        extra_env: dict[str, str] | None = None,
        proxy_s3: bool = True,
        artifacts_url: str | None = None,
        control_env: dict[str, str] | None = None,
    ) -> None:
        self.artifacts_url = artifacts_url
        self.control_env = control_env
        self.root = root
        self.proxy_s3 = proxy_s3
        self.root.mkdir(parents=True, exist_ok=True)
        self.attempt_workers = attempt_workers
        self.attempt_concurrency = attempt_concurrency
        self.redis = RedisServer(appendonly=True, appendfsync=appendfsync, data_dir=root / "redis")
        (root / "redis").mkdir(exist_ok=True)
        self.s3 = S3Server()
        self.s3_proxy: TcpProxy | None = None
        self.bucket = f"mfm-{uuid.uuid4().hex[:12]}"
        self.workers: dict[str, Worker] = {}
        self._seq = 0
        self.settings_env: dict[str, str] = {
            "MFM_LEASE_TTL_S": str(lease_ttl_s),
            "MFM_VISIBILITY_TIMEOUT_S": str(visibility_timeout_s),
            "MFM_OPERATIONS": operations,
            S3_ACCESS_ENV: TEST_S3_ACCESS,
            S3_SECRET_ENV: TEST_S3_SECRET,
            **(extra_env or {}),
        }
        self._saved_env: dict[str, str | None] = {}
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._workers_lock = threading.RLock()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        self.redis.start()
        self._configure_redis()
        self.s3.start()
        self.s3.create_bucket(self.bucket)
        if self.proxy_s3:
            self.s3_proxy = TcpProxy(self.s3.port)
            self.s3_proxy.enable()
        self.start_worker("control", "control", extra_env=self.control_env)
        for _ in range(self.attempt_workers):
            self.start_worker("attempts")
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        """Restart workers that exit on their own, like a process manager (compose's
        `restart: unless-stopped`): Celery/kombu 5.7 workers can exit when the broker
        connection drops while they hold unacked messages."""
        while not self._stopping.wait(0.5):
            with self._workers_lock:
                for name, worker in list(self.workers.items()):
                    if worker.proc.poll() is not None:
                        fresh = self.start_worker(wait=False, **worker.spec)
                        fresh.restarts = worker.restarts + 1
                        self.workers[name] = fresh

    def _configure_redis(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.redis.port)
        try:
            client.config_set("maxmemory-policy", "noeviction")
        finally:
            client.close()

    def restart_redis(self, *, kill: bool = False) -> None:
        self.redis.restart(kill=kill)
        self._configure_redis()

    def freeze_s3(self) -> None:
        """SIGSTOP the S3 server (its process group): requests hang instead of failing."""
        self._signal_s3(signal.SIGSTOP)

    def thaw_s3(self) -> None:
        self._signal_s3(signal.SIGCONT)

    def _signal_s3(self, sig: signal.Signals) -> None:
        if self.s3.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.s3.proc.pid, sig)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Wait until every worker is alive and ready (the supervisor restarts the ones
        that exited); False if that did not happen within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._workers_lock:
                workers = list(self.workers.values())
            if all(w.ready() for w in workers):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self) -> None:
        # Let go of this process's runtime (and its Celery app) and finalize its results
        # while Redis is still up: an AsyncResult's __del__ unsubscribes from the backend.
        self.restore_env()
        gc.collect()
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        for worker in list(self.workers.values()):
            worker.stop(kill=True)
        self.workers.clear()
        if self.s3_proxy is not None:
            self.s3_proxy.disable()
        self.s3.stop()
        self.redis.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- configuration --------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The settings every process of this cluster uses."""
        s3_port = self.s3_proxy.port if self.s3_proxy is not None else self.s3.port
        return {
            "MFM_BROKER_URL": self.redis.url_for_db(1),
            "MFM_RESULT_BACKEND": self.redis.url_for_db(2),
            "MFM_EVENTS_URL": self.redis.url_for_db(0),
            "MFM_ARTIFACTS_URL": self.artifacts_url
            or f"s3://{self.bucket}/artifacts?endpoint=http://127.0.0.1:{s3_port}",
            **self.settings_env,
        }

    def settings(self) -> ClusterSettings:
        """The cluster's settings, as its workers read them."""
        return ClusterSettings.from_env(self.env)

    def activate(self, *, current_app: bool = False) -> None:
        """Point this process's runtime (`workers.runtime.get_runtime`, what `submit_run`
        uses by default) at the cluster, and export the cluster's environment for the
        benchmark scripts' own reads. Tests clear `MFM_*` variables around each test
        (tests/conftest.py): their in-process CLI calls pass `env=cluster.env`.

        `current_app`: also make the runtime's app Celery's current app, for a benchmark
        that sends through the shared tasks' proxies (`noop.apply_async()`)."""
        for key, value in self.env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        from workers.runtime import configure, get_runtime

        configure(self.settings())
        if current_app:
            get_runtime().app.set_current()

    def restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        from workers.runtime import configure

        configure(None)

    # -- workers --------------------------------------------------------------------------------
    def start_worker(
        self,
        kind: str,
        name: str | None = None,
        *,
        concurrency: int | None = None,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Worker:
        """`kind` is `control`, `submit` (the submission queues) or `attempts`."""
        spec: dict[str, Any] = {"kind": kind, "concurrency": concurrency, "extra_env": extra_env}
        if name is None:
            self._seq += 1
            name = f"{kind}{self._seq}"
        spec["name"] = name
        queue = {"control": "mfm.control", "submit": "mfm.submit,celery"}.get(kind, "mfm.attempts")
        conc = {"control": 1, "submit": concurrency or 2}.get(
            kind, concurrency or self.attempt_concurrency
        )
        logfile = self.root / f"worker-{name}.log"
        log_offset = logfile.stat().st_size if logfile.exists() else 0
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra_env or {})
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)])
        argv = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker",
            "-Q", queue, "-c", str(conc), "-P", "prefork", "-n", f"{name}@%h",
            "--loglevel", "INFO", "--logfile", str(logfile),
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / f"worker-{name}.stderr", "ab"),  # noqa: SIM115
            start_new_session=True,
        )
        worker = Worker(name, proc, logfile, spec, log_offset)
        with self._workers_lock:
            self.workers[name] = worker
        if wait:
            self._wait_ready(worker)
        return worker

    def _wait_ready(self, worker: Worker) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"worker {worker.name} exited ({worker.proc.returncode})")
            with contextlib.suppress(OSError):
                if " ready." in worker.logfile.read_text(errors="replace"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"worker {worker.name} not ready within {READY_TIMEOUT_S}s")

    def stop_worker(self, name: str, *, kill: bool = False) -> None:
        with self._workers_lock:
            worker = self.workers.pop(name)
        worker.stop(kill=kill)

    def attempt_worker_names(self) -> list[str]:
        return [n for n in self.workers if n.startswith("attempts")]

    def logs(self) -> str:
        """Every worker log (for failure messages)."""
        out = []
        for path in sorted(self.root.glob("worker-*")):
            out.append(f"== {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)
