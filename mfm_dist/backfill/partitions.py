"""Where a backfill's partitions come from: a JSON Lines file of inputs, a CSV file, an
explicit list, or a date/time range with a step.

Every source yields `Partition(value, input)`. For a list or a range the value is placed
into the base input (`--input`, an object) under `field`; for a file each line or row *is*
an input (merged over the base input) and its partition value is the value of `field`
when given, else a digest of the input. Every error has a stable code and names a line,
row or option — never a value that could be a secret.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson

from mfm_dist.backfill.model import (
    MAX_PARTITIONS,
    BackfillError,
    Partition,
    check_partition_value,
)
from mfm_dist.canonical import JsonValue, canonical_bytes, sha256_hex
from mfm_dist.errors import MfmError

_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_STEP_RE = re.compile(r"^\s*(\d{1,9})\s*(s|m|h|d|w)\s*$")
_STEP_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def check_field(field: str | None, *, required: bool, source: str) -> str | None:
    if field is None:
        if required:
            raise BackfillError(
                "backfill_field_required",
                f"partitions from {source} need --field NAME: the input key their value goes to",
            )
        return None
    if not _FIELD_RE.match(field):
        raise BackfillError(
            "backfill_field_invalid", "--field is 1–64 characters of A-Z a-z 0-9 _ . -"
        )
    return field


def _base_object(base: JsonValue, source: str) -> dict[str, JsonValue]:
    if base is None:
        return {}
    if not isinstance(base, dict):
        raise BackfillError(
            "backfill_input_invalid",
            f"with partitions from {source} the base --input must be a JSON object",
        )
    return base


def _checked(value: JsonValue, where: str) -> JsonValue:
    try:
        canonical_bytes(value, where)
    except MfmError as exc:
        raise BackfillError(exc.info.code, exc.info.message) from None
    return value


def _digest_value(run_input: JsonValue) -> str:
    return sha256_hex(canonical_bytes(run_input, "partition input"))[:16]


def _unique(parts: Iterable[Partition]) -> list[Partition]:
    seen: set[str] = set()
    out: list[Partition] = []
    for part in parts:
        if part.value in seen:
            raise BackfillError(
                "backfill_partition_duplicate",
                f"partition {part.value!r} appears more than once",
                details={"partition": part.value},
            )
        seen.add(part.value)
        out.append(part)
        if len(out) > MAX_PARTITIONS:
            raise BackfillError(
                "backfill_too_many_partitions",
                f"a backfill has at most {MAX_PARTITIONS} partitions",
            )
    if not out:
        raise BackfillError("backfill_empty", "the backfill has no partitions")
    return out


def _value_of(run_input: JsonValue, field: str | None, where: str) -> str:
    if field is None:
        return _digest_value(run_input)
    if not isinstance(run_input, dict) or field not in run_input:
        raise BackfillError("backfill_source_invalid", f"{where} has no {field!r} field")
    raw = run_input[field]
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise BackfillError(
            "backfill_source_invalid", f"{where}: {field!r} must be a string or an integer"
        )
    return check_partition_value(str(raw), where)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BackfillError(
            "backfill_source_unreadable", f"cannot read the {what} file ({type(exc).__name__})"
        ) from None


def from_jsonl(
    path: Path, base: JsonValue, field: str | None, *, text: str | None = None
) -> list[Partition]:
    """One input per non-empty line (an object is merged over the base input)."""
    check_field(field, required=False, source="a JSON Lines file")
    body = _read_text(path, "JSON Lines") if text is None else text
    base_obj = base if isinstance(base, dict) else None
    if base is not None and base != {} and base_obj is None:
        _base_object(base, "a JSON Lines file")
    parts = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            value: JsonValue = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BackfillError(
                "backfill_source_invalid", f"{where} is not valid JSON", details={"line": number}
            ) from None
        if base_obj:
            if not isinstance(value, dict):
                raise BackfillError(
                    "backfill_source_invalid",
                    f"{where} must be a JSON object to be merged over --input",
                    details={"line": number},
                )
            value = {**base_obj, **value}
        _checked(value, where)
        parts.append(Partition(value=_value_of(value, field, where), input=value))
    return _unique(parts)


def from_csv(
    path: Path, base: JsonValue, field: str | None, *, text: str | None = None
) -> list[Partition]:
    """One input per row: the header names the keys, every value is a string."""
    check_field(field, required=False, source="a CSV file")
    base_obj = _base_object(base, "a CSV file")
    body = _read_text(path, "CSV") if text is None else text
    reader = csv.reader(io.StringIO(body))
    try:
        rows = list(reader)
    except csv.Error:
        raise BackfillError("backfill_source_invalid", "the CSV file cannot be parsed") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise BackfillError("backfill_empty", "the CSV file has no header and no rows")
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header) or len(set(header)) != len(header):
        raise BackfillError(
            "backfill_source_invalid", "the CSV header needs unique, non-empty column names"
        )
    parts = []
    for number, row in enumerate(rows[1:], start=2):
        where = f"row {number}"
        if len(row) != len(header):
            raise BackfillError(
                "backfill_source_invalid",
                f"{where} has {len(row)} columns, the header {len(header)}",
                details={"row": number},
            )
        value: dict[str, JsonValue] = {**base_obj, **dict(zip(header, row, strict=True))}
        _checked(value, where)
        parts.append(Partition(value=_value_of(value, field, where), input=value))
    return _unique(parts)


def from_values(values: Iterable[str], base: JsonValue, field: str | None) -> list[Partition]:
    """An explicit list: each value placed into the base input under `field`."""
    name = check_field(field, required=True, source="a list")
    assert name is not None
    base_obj = _base_object(base, "a list")
    parts = []
    for number, raw in enumerate(values, start=1):
        value = check_partition_value(raw.strip(), f"partition {number}")
        run_input = {**base_obj, name: value}
        _checked(run_input, f"partition {number}")
        parts.append(Partition(value=value, input=run_input))
    return _unique(parts)


def split_list(text: str) -> list[str]:
    """`a,b,c` (blank items dropped)."""
    return [item for item in (p.strip() for p in text.split(",")) if item]


def parse_step(text: str) -> timedelta:
    match = _STEP_RE.match(text or "")
    if not match or int(match.group(1)) < 1:
        raise BackfillError(
            "backfill_step_invalid", "--every is a positive count of s, m, h, d or w (e.g. 1d)"
        )
    return timedelta(seconds=int(match.group(1)) * _STEP_UNITS[match.group(2)])


def parse_instant(text: str, option: str) -> tuple[datetime, bool]:
    """(UTC instant, whether it was a plain date) of `YYYY-MM-DD` or an ISO 8601 date-time
    (`YYYY-MM-DDTHH:MM[:SS][Z|±HH:MM]`; without an offset it is UTC)."""
    raw = (text or "").strip()
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=UTC), True
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BackfillError(
            "backfill_range_invalid",
            f"{option} is YYYY-MM-DD or an ISO 8601 date-time (YYYY-MM-DDTHH:MM[:SS][Z])",
        ) from None
    if "T" not in raw.upper() and " " not in raw:
        raise BackfillError("backfill_range_invalid", f"{option} is not a date or date-time")
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment, False


def range_values(start: str, end: str, every: str) -> list[str]:
    """Every instant from `start` to `end` inclusive, `every` apart: `YYYY-MM-DD` when both
    ends are dates and the step is whole days, else `YYYY-MM-DDTHH:MM:SSZ`."""
    first, first_is_date = parse_instant(start, "--from")
    last, last_is_date = parse_instant(end, "--to")
    step = parse_step(every)
    if last < first:
        raise BackfillError("backfill_range_invalid", "--to is before --from")
    count = (last - first) // step + 1
    if count > MAX_PARTITIONS:
        raise BackfillError(
            "backfill_too_many_partitions",
            f"the range has {count} partitions; a backfill has at most {MAX_PARTITIONS}",
        )
    dates = first_is_date and last_is_date and step % timedelta(days=1) == timedelta(0)
    fmt = "%Y-%m-%d" if dates else "%Y-%m-%dT%H:%M:%SZ"
    return [(first + k * step).strftime(fmt) for k in range(count)]


def from_range(
    start: str, end: str, every: str, base: JsonValue, field: str | None
) -> list[Partition]:
    check_field(field, required=True, source="a date/time range")
    return from_values(range_values(start, end, every), base, field)
