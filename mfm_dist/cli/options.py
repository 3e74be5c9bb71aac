"""Turning command-line options into library values: run input and `RunConfig`.

Validation of the values themselves (floats, secrets, op configs) stays in the
library; this module only parses, and never quotes what it parsed in an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from mfm_dist.canonical import JsonValue
from mfm_dist.config import (
    Duration,
    EventProfileLevel,
    FanOutJoin,
    FixedBackoff,
    IoMode,
    RetryPolicy,
    RunConfig,
)
from mfm_dist.errors import InvalidInput

DRY_RUN_TAG = "apply_side_effect"
PROFILES = {
    "minimal": EventProfileLevel.MINIMAL,
    "normal": EventProfileLevel.NORMAL,
    "verbose": EventProfileLevel.VERBOSE,
}


def parse_input(raw: str | None) -> JsonValue:
    """`--input JSON` or `--input @file.json`; `{}` when absent."""
    if raw is None:
        return {}
    text = raw
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(
                "input_file_unreadable", f"cannot read the --input file ({type(exc).__name__})"
            ) from None
    try:
        value: JsonValue = json.loads(text)
        return value
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            "input_invalid_json",
            f"--input is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None


def build_run_config(
    *,
    fan_out: int | None = None,
    skip_tags: tuple[str, ...] = (),
    dry_run: bool = False,
    profile: str = "normal",
    max_attempts: int = 1,
    backoff_ms: int = 0,
    replay: bool = False,
) -> RunConfig:
    """The `RunConfig` the `run` options describe (defaults equal `RunConfig()`)."""
    tags = list(dict.fromkeys(skip_tags))
    if dry_run and DRY_RUN_TAG not in tags:
        tags.append(DRY_RUN_TAG)
    return RunConfig(
        io_mode=IoMode.REPLAY if replay else IoMode.LIVE,
        retry_policy=RetryPolicy(
            max_attempts=max_attempts,
            backoff=FixedBackoff(delay=Duration.from_millis(backoff_ms)),
        ),
        event_profile=PROFILES[profile],
        execution_mode=FanOutJoin(max_concurrency=fan_out) if fan_out is not None else "Sequential",
        skip_tags=tags,
    )
