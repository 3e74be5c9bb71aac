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
    """`value` (JSON-like) with every secret-shaped string value replaced by `<redacted>`,
    and every member with a secret-shaped key by `"<redacted key N>": "<redacted>"` (the
    value of a `password` key is a secret whatever it looks like)."""
    if isinstance(value, str):
        return REDACTED if is_secret_string(value) else value
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        hidden = 0
        for k, v in value.items():
            if isinstance(k, str) and is_secret_string(k):
                hidden += 1
                out[f"{REDACTED[:-1]} key {hidden}>"] = REDACTED
            else:
                out[k] = scrub(v)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def label_pairs(labels: dict[str, str]) -> list[tuple[str, str, bool]]:
    """A run's labels to show, sorted: (key, value, shown). A pair with a secret-shaped key
    or value is shown as `<redacted>=<redacted>` (and not linked)."""
    out: list[tuple[str, str, bool]] = []
    for key, value in sorted(labels.items()):
        if is_secret_string(key) or is_secret_string(value):
            out.append((REDACTED, REDACTED, False))
        else:
            out.append((key, value, True))
    return out
