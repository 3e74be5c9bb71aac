"""The README stays true: every error code the code raises is listed, and CI runs exactly the
README's test command."""

from __future__ import annotations

import re

from support import REPO

ROOT = REPO
README = (ROOT / "README.md").read_text()
CONSTRUCTOR = re.compile(
    r"\b(?:\w*Error|InvalidInput|Corruption|NotFound|\w*Unavailable|CliError|GuardViolation|"
    r"Violation)\(\s*\"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\""
)
KEYWORD = re.compile(r"\bcode=\"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\"")


def raised_codes() -> set[str]:
    codes: set[str] = set()
    for package in ("mfm_dist", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            codes.update(CONSTRUCTOR.findall(text))
            codes.update(KEYWORD.findall(text))
    return codes


def test_every_error_code_is_documented() -> None:
    codes = raised_codes()
    assert len(codes) > 50
    missing = sorted(c for c in codes if f"`{c}`" not in README)
    assert missing == [], f"error codes missing from the README's list: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    command = "./scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text()
