"""Every test starts from an environment without `MFM_*` variables, so a developer's shell
(`MFM_EVENTS_URL` pointing at a real Redis, `MFM_OPERATIONS`, credentials…) never leaks
into a test. A test or fixture that needs a variable sets it with `monkeypatch.setenv`
(function-scoped fixtures run after this one), or passes a mapping explicitly
(`Settings.from_env({...})`, `CliRunner().invoke(..., env=...)`)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_mfm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("MFM_")]:
        monkeypatch.delenv(name)
