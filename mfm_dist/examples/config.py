"""The input check every example operation shares (its own module, so the examples'
package and its submodules import it without importing each other)."""

from __future__ import annotations

from mfm_dist.canonical import JsonValue
from mfm_dist.errors import InvalidInput


def check_config(op_id: str, config: JsonValue, allowed: set[str]) -> dict[str, JsonValue]:
    """An example's input must be an object with known keys: a typo is an error, not a
    silent default."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise InvalidInput("op_config_invalid", f"{op_id} takes a JSON object as input")
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise InvalidInput(
            "op_config_invalid",
            f"{op_id} does not know {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(sorted(allowed)) or 'no keys'}",
        )
    return config
