"""Shared test support: server fixtures, a local cluster, harnesses and test operations.

Imported as `support.<module>` (`tests/` is on pytest's `pythonpath`); workers started by
the tests load the test operations as `support.dist_ops` etc. with `tests/` on their
`PYTHONPATH`.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root."""
TESTS = REPO / "tests"
"""The test tree (what a child process needs on `PYTHONPATH` to import `support`)."""
