"""Every Python script under `scripts/` explains itself: `--help` prints its usage and exits 0.

(`soak.py --help` once crashed on a `%` in a help string: argparse formats help text with
`%`, so a percentage has to be written `%%`.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def test_there_are_scripts_to_check() -> None:
    assert {"soak.py", "bench_scale.py", "bench_cluster.py"} <= {s.name for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_usage(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and "Traceback" not in done.stderr
