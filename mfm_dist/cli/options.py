"""Turning command-line options into library values: run input, `RunConfig`, labels and
times.

Validation of the values themselves (floats, secrets, op configs) stays in the
library; this module only parses, and never quotes what it parsed in an error.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from mfm_dist.canonical import JsonValue, check_json
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
from mfm_dist.submission import check_labels

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
    state_timeout_s: float | None = None,
    run_timeout_s: float | None = None,
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
        state_timeout=_duration(state_timeout_s),
        run_timeout=_duration(run_timeout_s),
    )


def _duration(seconds: float | None) -> Duration | None:
    return None if seconds is None else Duration.from_millis(max(1, round(seconds * 1000)))


def parse_labels(values: tuple[str, ...] | list[str], option: str = "--label") -> dict[str, str]:
    """`KEY=VALUE` pairs (repeatable) → labels, under the submission's label rules
    (`submission.check_labels`); a key given twice with two values is refused. Never
    quotes a value (it could be anything)."""
    labels: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key:
            raise InvalidInput("label_invalid", f"{option} takes KEY=VALUE")
        if labels.get(key, value) != value:
            raise InvalidInput("label_invalid", f"{option}: label {_key_shown(key)} given twice")
        labels[key] = value
    check_json(labels, "labels")  # secret-shaped keys or values: secrets_detected
    try:
        return check_labels(labels)
    except ValueError as exc:
        raise InvalidInput("label_invalid", f"{option}: {exc}") from None


def _key_shown(key: str) -> str:
    return key if re.fullmatch(r"[a-z0-9][a-z0-9_.\-/]{0,62}", key) else "?"


_RELATIVE = re.compile(r"^(\d{1,9})(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_time(text: str, now_ms: int, option: str) -> int:
    """A point in time in epoch milliseconds: ISO-8601 (`2026-01-31`, `2026-01-31T12:00`,
    `…Z`, `…+02:00`; without an offset it is UTC) or an age relative to `now_ms`
    (`90s`, `15m`, `2h`, `3d`, `1w`)."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        return now_ms - int(relative.group(1)) * _UNIT_MS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            "time_invalid",
            f"{option} takes an ISO-8601 date or time (2026-01-31, 2026-01-31T12:00Z) or an "
            "age (30m, 2h, 3d, 1w)",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
