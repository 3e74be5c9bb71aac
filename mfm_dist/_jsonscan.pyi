"""Compiled canonical-JSON checks (mfm_dist/_jsonscan.c); see mfm_dist/canonical.py."""

from collections.abc import Sequence
from typing import Any

def configure_secrets(
    markers: Sequence[str], mnemonic_min_words: int, mnemonic_max_words: int, /
) -> None: ...
def configure_limits(max_depth: int, max_abs_int: int, /) -> None: ...
def scan(value: Any, secrets: bool, /) -> int:
    """0 clean; 1 dirty (ask the Python reference); 2 clean, with a key beyond U+FFFF."""

def find_secret(value: Any, /) -> int:
    """0 no secret-shaped key or string; 1 one found; 2 undecided (ask the Python reference)."""
def check_bytes(data: bytes, /) -> int:
    """0 canonical JSON, clean for a read; 1 not canonical (or not JSON, or a non-integer or
    out-of-range number); 2 a secret-shaped key or string; 3 nested deeper than the limit.
    Anything but 0: ask the reference read."""
