"""The test tree's own isolation (tests/conftest.py): no `MFM_*` setting from the shell
reaches a test, and none set by one test reaches the next."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import REPO

PROBE = "MFM_TEST_ISOLATION_PROBE"


@pytest.mark.skipif(not os.environ.get("ISOLATION_PROBE"), reason="run by the test below")
def test_probe_sees_no_outside_setting() -> None:
    assert not [k for k in os.environ if k.startswith("MFM_")]


def test_outside_settings_never_reach_a_test() -> None:
    env = {**os.environ, "ISOLATION_PROBE": "1", "MFM_EVENTS_URL": "redis://outside:1/0",
           "MFM_HOME": "/nonexistent"}  # fmt: skip
    probe = "tests/project/test_isolation.py::test_probe_sees_no_outside_setting"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", probe],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_a_setting_leaked_by_one_test_is_gone_in_the_next_1() -> None:
    os.environ[PROBE] = "leaked"  # deliberately not through monkeypatch


def test_a_setting_leaked_by_one_test_is_gone_in_the_next_2() -> None:
    assert PROBE not in os.environ
