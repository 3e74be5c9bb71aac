"""Test-wide isolation of the process environment.

Configuration is read from `MFM_*` variables where a program starts, so a developer's shell
(an exported `MFM_EVENTS_URL`, say) must never reach a test, and one test's settings must
never reach the next. Server fixtures and the local cluster live in `support/` (loaded as
the `support.servers` plugin, see `pyproject.toml`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

PREFIX = "MFM_"


def _ours() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


def _restore(saved: dict[str, str]) -> None:
    for name in [k for k in os.environ if k.startswith(PREFIX) and k not in saved]:
        del os.environ[name]
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="session")
def _no_outside_settings() -> Iterator[None]:
    """The session starts with no `MFM_*` variable from the shell; they come back after."""
    outside = _ours()
    _restore({})
    yield
    _restore(outside)


@pytest.fixture(autouse=True)
def _no_leaked_settings(_no_outside_settings: None) -> Iterator[None]:
    """Whatever `MFM_*` variables a test sets or removes are put back after it (fixtures of a
    wider scope, such as an activated cluster, set theirs before this snapshot)."""
    before = _ours()
    yield
    _restore(before)
