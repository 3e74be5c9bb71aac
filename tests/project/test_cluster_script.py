"""scripts/cluster.sh tells the truth and heals itself: `start` refuses a port another
process holds (and leaves nothing running), `status` reports every component as it is,
a worker that dies is restarted by its supervisor, `stop` says what it stopped and leaves
no process behind (supervisors included, so nothing comes back).

Each test uses its own MFM_CLUSTER_DIR and free ports; every process the script starts
inherits MFM_CLUSTER_DIR, which is how the tests find (and, on failure, kill) them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from support import REPO

ROOT = REPO
SCRIPT = ROOT / "scripts" / "cluster.sh"
WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")
TIMEOUT_S = 180.0


class Cluster:
    """Runs scripts/cluster.sh with a private cluster dir and ports."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "cluster"
        self.env = {
            **os.environ,
            "MFM_CLUSTER_DIR": str(self.dir),
            "MFM_REDIS_PORT": "0",
            "MFM_S3_PORT": "0",
            "MFM_STOP_GRACE_S": "5",
            "MFM_OPERATIONS": "",
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def status(self) -> tuple[int, dict[str, str]]:
        """Exit code and `component -> rest of its line`."""
        result = self.run("status")
        lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
        return result.returncode, lines

    def pid(self, name: str) -> int:
        return int((self.dir / f"{name}.pid").read_text())

    def ports(self) -> dict[str, int]:
        text = (self.dir / "cluster.ports").read_text()
        return {k: int(v) for k, v in re.findall(r"^(\w+)=(\d+)$", text, re.M)}

    def processes(self) -> list[int]:
        """Every live process started by the script for this cluster (by its environment)."""
        marker = f"MFM_CLUSTER_DIR={self.dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ and not is_zombie(int(entry)):
                found.append(int(entry))
        return found

    def kill_everything(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(") ", 1)[1].startswith("Z")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not is_zombie(pid)


def listening_pids(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        pids.add(int(entry))
    return pids


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def up_pid(line: str) -> int:
    match = re.match(r"up \(pid (\d+)", line)
    assert match, line
    return int(match.group(1))


def run_workflow(cluster: Cluster, tmp_path: Path) -> None:
    """A small fan-out through the cluster (its `env` settings), which must complete."""
    env_lines = cluster.run("env").stdout
    settings = dict(re.findall(r"^export (\w+)='?([^'\n]*)'?$", env_lines, re.M))
    run = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "mfm"), "run", "fanout_demo", "--input",
         '{"items": 6}', "--fan-out", "3", "--backend", "celery", "--timeout", "120", "--json"],
        env={**os.environ, **settings, "MFM_HOME": str(tmp_path / "home")},
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["phase"] == "Completed"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        if c.dir.exists():
            c.run("stop")
        c.kill_everything()


@pytest.mark.slow
@pytest.mark.parametrize("component", ["redis", "s3"])
def test_start_fails_on_a_port_held_by_another_process(cluster: Cluster, component: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = cluster.run("start", "1", **{f"MFM_{component.upper()}_PORT": str(port)})
        assert result.returncode != 0, result.stdout
        assert f"port {port} for {component} is already in use by pid {os.getpid()}" in (
            result.stderr
        ), result.stderr
        assert "cluster up" not in result.stdout
        assert cluster.processes() == [], "start left processes running after failing"
        # The squatter is untouched and still the only listener.
        assert listening_pids(port) == {os.getpid()}
    status = cluster.run("status")
    assert status.returncode == 3 and "no cluster running" in status.stdout, status.stdout


@pytest.mark.slow
def test_status_supervision_and_stop_tell_the_truth(cluster: Cluster, tmp_path: Path) -> None:
    started = cluster.run("start", "1")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "cluster up" in started.stdout
    ports = cluster.ports()

    # status: every component, with the pid the script recorded and that really serves.
    code, lines = cluster.status()
    assert code == 0, lines
    assert set(lines) == {"redis", "s3", "control", "submit", "attempts1"}, lines
    assert up_pid(lines["redis"]) == cluster.pid("redis")
    assert listening_pids(ports["REDIS_PORT"]) == {cluster.pid("redis")}
    assert up_pid(lines["s3"]) == cluster.pid("s3")
    assert cluster.pid("s3") in listening_pids(ports["S3_PORT"])
    for name in ("control", "submit", "attempts1"):
        assert up_pid(lines[name]) == cluster.pid(name)
        assert "restarts 0" in lines[name]

    # A worker killed outright (SIGKILL of its main process) comes back by itself.
    killed = cluster.pid("attempts1")
    os.kill(killed, signal.SIGKILL)

    def restarted() -> bool:
        _, now = cluster.status()
        return now.get("attempts1", "").startswith("up") and "restarts 1" in now["attempts1"]

    wait_for(restarted, "the supervisor to restart attempts1")
    _, lines = cluster.status()
    assert up_pid(lines["attempts1"]) not in (killed, 0)
    assert not alive(killed)
    assert "attempts1: worker pid" in (cluster.dir / "supervisor.log").read_text()

    # The healed cluster runs a workflow end to end (Redis, SeaweedFS, both workers).
    run_workflow(cluster, tmp_path)

    # A worker whose supervisor is gone too is reported down (nothing restarts it).
    control_supervisor = int((cluster.dir / "control.supervisor.pid").read_text())
    control = cluster.pid("control")
    os.kill(control_supervisor, signal.SIGKILL)
    os.killpg(control, signal.SIGKILL)
    wait_for(lambda: not alive(control), "the control worker to die")
    code, lines = cluster.status()
    assert code == 3 and lines["control"] == "down", lines
    assert lines["redis"].startswith("up") and lines["attempts1"].startswith("up"), lines

    # `start` again starts only what is missing.
    again = cluster.run("start", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "redis: already running" in again.stdout and "control: started" in again.stdout
    code, lines = cluster.status()
    assert code == 0, lines

    # stop: says what it stopped and what was not running, and leaves nothing behind.
    attempts_supervisor = int((cluster.dir / "attempts1.supervisor.pid").read_text())
    attempts = cluster.pid("attempts1")
    os.kill(attempts_supervisor, signal.SIGKILL)
    os.killpg(attempts, signal.SIGKILL)
    wait_for(lambda: not alive(attempts), "attempts1 to die")
    s3_pid, redis_pid = cluster.pid("s3"), cluster.pid("redis")
    stopped = cluster.run("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    out = stopped.stdout
    assert "attempts1: was not running" in out
    assert re.search(r"^control: stopped \(worker pid \d+, supervisor pid \d+\)$", out, re.M), out
    assert f"s3: stopped (pid {s3_pid})" in out and f"redis: stopped (pid {redis_pid})" in out
    assert out.rstrip().endswith("cluster stopped")
    assert cluster.processes() == []
    time.sleep(3)  # no supervisor is left to bring anything back
    assert cluster.processes() == []
    for port in (ports["REDIS_PORT"], ports["S3_PORT"]):
        assert listening_pids(port) == set()
    code, _ = cluster.status()
    assert code == 3
    assert "nothing to stop" in cluster.run("stop").stdout


@pytest.mark.slow
def test_cluster_heals_after_a_redis_crash(cluster: Cluster, tmp_path: Path) -> None:
    """Redis SIGKILLed under running workers: `status` says so, `start` brings back only
    Redis (same port, its AOF), and whatever worker the outage killed (with Celery/kombu
    5.7 the control worker usually exits on reconnect) is restarted by its supervisor."""
    started = cluster.run("start", "1")
    assert started.returncode == 0, started.stdout + started.stderr
    redis = cluster.pid("redis")
    port = cluster.ports()["REDIS_PORT"]
    os.kill(redis, signal.SIGKILL)
    wait_for(lambda: not alive(redis), "redis to die")
    code, lines = cluster.status()
    assert code == 3 and lines["redis"] == "down", lines
    again = cluster.run("start", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"redis: started (pid {cluster.pid('redis')}, port {port}," in again.stdout
    assert "s3: already running" in again.stdout
    time.sleep(5)  # let a worker that is going to die of the outage do so

    wait_for(lambda: cluster.status()[0] == 0, "every component to be up again")
    run_workflow(cluster, tmp_path)


def test_workers_run_with_the_same_flags_everywhere() -> None:
    """cluster.sh, tests/support/cluster.py and compose (services and image) all run workers
    without gossip, mingle and heartbeats, as the README says."""
    script = SCRIPT.read_text()
    match = re.search(r"^WORKER_FLAGS=\((.*)\)$", script, re.M)
    assert match and tuple(match.group(1).split()) == WORKER_FLAGS
    local = (ROOT / "tests" / "support" / "cluster.py").read_text()
    assert all(f'"{flag}"' in local for flag in WORKER_FLAGS)
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    for service in ("control", "attempts"):
        command = [str(part) for part in compose["services"][service]["command"]]
        assert set(WORKER_FLAGS) <= set(command), (service, command)
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert all(f'"{flag}"' in dockerfile for flag in WORKER_FLAGS)
