"""Canonical JSON (RFC 8785) and content addresses (docs/canonical-json.md).

`canonical_bytes` is the only way structured data becomes hashed or persisted
bytes: it runs the secrets scan, rejects floats and integers outside ±(2^53−1),
then serializes with `rfc8785`. `parse_canonical` is its inverse for reads and
insists the stored bytes are exactly canonical.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeAlias

import orjson
import rfc8785

from mfm_dist.errors import CanonicalJsonError, Corruption, SecretsDetected
from mfm_dist.ids import ArtifactId
from mfm_dist.secrets import is_secret_string

JsonValue: TypeAlias = Any
"""A JSON value: None, bool, int, str, list of JSON values, dict of str to JSON values."""

MAX_SAFE_INTEGER = 2**53 - 1


class FloatNotAllowed(CanonicalJsonError):
    def __init__(self, where: str) -> None:
        super().__init__(
            "float_not_allowed", f"non-integer number in {where}; floats are forbidden"
        )


class IntegerOutOfRange(CanonicalJsonError):
    def __init__(self, where: str) -> None:
        super().__init__(
            "integer_out_of_range",
            f"integer in {where} exceeds ±(2^53−1); send big numbers as strings",
        )


MAX_JSON_DEPTH = 512


def _bad_string(text: str) -> bool:
    """Strings RFC 8785 cannot encode: lone surrogates (not valid UTF-8)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_json(value: JsonValue, where: str = "value", *, secrets: bool = True) -> None:
    """Validate a JSON-like structure: types, floats, integer range, strings, nesting depth
    (which also stops self-referencing containers) and — first — secrets."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    found_secret = False
    problem: CanonicalJsonError | None = None

    def note(err: CanonicalJsonError) -> None:
        nonlocal problem
        if problem is None:
            problem = err

    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if secrets and not found_secret and is_secret_string(item):
                found_secret = True
            if _bad_string(item):
                note(
                    CanonicalJsonError("json_string_invalid", f"invalid unicode string in {where}")
                )
            continue
        if isinstance(item, int):
            if abs(item) > MAX_SAFE_INTEGER:
                note(IntegerOutOfRange(where))
            continue
        if isinstance(item, float):
            note(FloatNotAllowed(where))
            continue
        if isinstance(item, (dict, list, tuple)) and depth >= MAX_JSON_DEPTH:
            note(CanonicalJsonError("json_too_deep", f"{where} nests deeper than {MAX_JSON_DEPTH}"))
            if found_secret or not secrets:
                break
            continue
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    note(
                        CanonicalJsonError(
                            "json_key_not_string", f"non-string object key in {where}"
                        )
                    )
                    continue
                if secrets and not found_secret and is_secret_string(k):
                    found_secret = True
                if _bad_string(k):
                    note(
                        CanonicalJsonError("json_string_invalid", f"invalid unicode key in {where}")
                    )
                stack.append((v, depth + 1))
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
            continue
        note(
            CanonicalJsonError(
                "json_type_not_supported", f"{type(item).__name__} is not JSON in {where}"
            )
        )
    # The secrets scan runs first: it is the more important verdict.
    if found_secret:
        raise SecretsDetected(where)
    if problem is not None:
        raise problem


def canonical_bytes(value: JsonValue, where: str = "value") -> bytes:
    """RFC 8785 bytes of `value` after the secrets, float and range checks."""
    check_json(value, where)
    return _jcs(value)


def canonical_bytes_unchecked(value: JsonValue) -> bytes:
    """RFC 8785 bytes of a value already validated by `check_json` (hot paths)."""
    return _jcs(value)


def _keys_in_bmp(value: JsonValue) -> bool:
    """True if no object key holds a character outside the Basic Multilingual Plane."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not k.isascii() and any(ord(c) > 0xFFFF for c in k):
                    return False
                if isinstance(v, (dict, list, tuple)):
                    stack.append(v)
        elif isinstance(item, (list, tuple)):
            stack.extend(v for v in item if isinstance(v, (dict, list, tuple)))
    return True


def _jcs(value: JsonValue) -> bytes:
    """RFC 8785 bytes. For validated values (integers only, valid strings) orjson with sorted
    keys writes exactly the JCS form — same escaping, same numbers — except for key order
    when a key holds a character beyond U+FFFF (JCS sorts by UTF-16 code units, orjson by
    code points); those rare values go through the reference `rfc8785` encoder. The
    equivalence is property-tested against `rfc8785` in tests/test_canonical.py."""
    if _keys_in_bmp(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # nested deeper than orjson's limit (254): the reference encoder handles it
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:  # pragma: no cover - check_json guards this
        raise CanonicalJsonError("json_not_canonicalizable", str(exc)) from None


def json_copy(value: JsonValue) -> JsonValue:
    """A deep copy in JSON form (tuples become lists) of a value `check_json` accepted."""
    return orjson.loads(_jcs(value))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_id_of_bytes(data: bytes) -> ArtifactId:
    return ArtifactId(sha256_hex(data))


def artifact_id_of_json(value: JsonValue, where: str = "value") -> ArtifactId:
    return artifact_id_of_bytes(canonical_bytes(value, where))


def parse_canonical(data: bytes, where: str = "artifact") -> JsonValue:
    """Decode JSON artifact bytes, requiring canonical, float-free, secret-free content."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Corruption("artifact_json_decode_failed", f"{where} is not valid JSON") from None
    stack: list[Any] = [value]
    secret = False
    has_float = False
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            secret = secret or is_secret_string(item)
        elif isinstance(item, float):
            has_float = True
        elif isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > MAX_SAFE_INTEGER:
                has_float = True
        elif isinstance(item, dict):
            for k, v in item.items():
                secret = secret or is_secret_string(k)
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    if secret:
        raise Corruption("secrets_detected", f"{where} contains secret-shaped content")
    if has_float:
        raise Corruption("artifact_float_not_allowed", f"{where} contains a non-integer number")
    if _jcs(value) != data:
        raise Corruption("artifact_not_canonical", f"{where} bytes are not canonical JSON")
    return value


def json_dumps_pretty(value: JsonValue) -> str:
    """Human-friendly JSON for CLI output (not for hashing)."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
