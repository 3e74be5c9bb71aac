"""Nothing secret-shaped leaves the dashboard (docs/secrets.md).

Secret-shaped values are refused before anything is stored, so a store written by
mfm-dist holds none; the dashboard still checks every value it shows — a store written by
something else, or tampered with, must not make it echo one. JSON responses pass through
`scrub`; every value a template prints passes through `shown` (the Jinja `finalize` hook).
"""

from __future__ import annotations

from typing import Any

from mfm_dist.secrets import is_secret_string

REDACTED = "<redacted>"


def shown(value: Any) -> Any:
    """A value a template prints: a secret-shaped string becomes `<redacted>`."""
    if isinstance(value, str) and is_secret_string(value):
        return REDACTED
    return value


def scrub(value: Any) -> Any:
    """`value` (JSON-like) with every secret-shaped string value replaced by `<redacted>`
    and every secret-shaped key by `<redacted key N>`."""
    if isinstance(value, str):
        return REDACTED if is_secret_string(value) else value
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        hidden = 0
        for k, v in value.items():
            if isinstance(k, str) and is_secret_string(k):
                hidden += 1
                k = f"{REDACTED[:-1]} key {hidden}>"
            out[k] = scrub(v)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value
