"""`mfm` run in child processes (to interrupt, kill or race them), and in process with the
test operations of `support.slow_ops`."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mfm_dist.cli.main import cli
from support import TESTS

CLI = [sys.executable, "-m", "mfm_dist.cli.main"]


class Mfm:
    """`mfm` in a child process, its stderr read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MFM_")}
        env["PYTHONPATH"] = str(TESTS)  # slow_ops
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode()
            self.stderr.append(line)
            self.lines.put(line)

    def next_line(self, timeout: float = 60.0) -> str:
        return self.lines.get(timeout=timeout)

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # until the child closes it (it exits)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code, out.decode(), "".join(self.stderr)


@pytest.fixture
def children() -> Iterator[list[Mfm]]:
    started: list[Mfm] = []
    try:
        yield started
    finally:
        for child in started:  # only ours, by pid
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(timeout=30)


def spawn(children: list[Mfm], tmp_path: Path, *args: str) -> Mfm:
    child = Mfm([*CLI, *args], tmp_path)
    children.append(child)
    return child


def mfm(home: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--home", str(home), "--ops", "support.slow_ops", *args], catch_exceptions=False
    )
