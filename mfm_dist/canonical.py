"""Canonical JSON (RFC 8785) and content addresses (docs/canonical-json.md).

`canonical_bytes` is the only way structured data becomes hashed or persisted
bytes: it runs the secrets scan, rejects floats and integers outside ±(2^53−1),
then serializes to RFC 8785. `parse_canonical` is its inverse for reads and
insists the stored bytes are exactly canonical.

How this runs at C speed: one compiled pass (`mfm_dist._jsonscan`, built from
`_jsonscan.c`) answers "would the reference checker accept this value?" for
values made of exact JSON types; the bytes then come from one `orjson` call with
sorted keys, which for such values is byte-identical to RFC 8785 (property-tested
against the reference `rfc8785` package in tests/engine/test_canonical.py). Whatever the
compiled pass cannot clear — a float, a secret, a subclass, a key beyond U+FFFF,
any problem at all — goes to the exact pure-Python reference below, which also
chooses every error code and message.

A read (`parse_canonical`, and `check_canonical_bytes` where the value is not needed)
runs a second compiled pass, over the bytes: it accepts exactly the canonical, clean
ones (the tests hold it to the reference on random and mutated bytes), which then need
only `orjson.loads`; anything else goes to the reference read, which decodes, checks the
value and compares its re-encoding with the bytes. Without a C compiler the package
installs without the compiled passes and every value takes the reference path (same
results, slower).
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeAlias

import orjson
import rfc8785

from mfm_dist.errors import CanonicalJsonError, Corruption, SecretsDetected
from mfm_dist.ids import ArtifactId
from mfm_dist.secrets import is_secret_string

try:
    # Named as an export: the tests and scripts/bench_canonical.py read it and swap it out.
    from mfm_dist import _jsonscan as _jsonscan
except ImportError:  # built without a C compiler: the reference paths below are used
    _jsonscan = None  # type: ignore[assignment]

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

if _jsonscan is not None:
    _jsonscan.configure_limits(MAX_JSON_DEPTH, MAX_SAFE_INTEGER)

_DIRTY = 1
"""`_scan` flag: the compiled pass did not clear the value; the Python reference decides."""
_ASTRAL_KEY = 2
"""`_scan` flag: a clean value with an object key beyond U+FFFF (JCS orders keys by UTF-16)."""


def _scan(value: JsonValue, secrets: bool) -> int:
    """The compiled pass: 0 (clean), `_DIRTY`, or `_ASTRAL_KEY` (clean otherwise)."""
    if _jsonscan is None:
        return _DIRTY
    return _jsonscan.scan(value, secrets)


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
    if _scan(value, secrets) & _DIRTY:
        _check_json_reference(value, where, secrets=secrets)


def _check_json_reference(value: JsonValue, where: str, *, secrets: bool = True) -> None:
    """The rules' reference definition (a Python walk); picks every error code and message."""
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
    """RFC 8785 bytes of `value` after the secrets, float and range checks (one pass)."""
    flags = _scan(value, True)
    if flags & _DIRTY:
        _check_json_reference(value, where)  # raises the precise error, if there is one
        return _jcs_reference(value)
    return _encode_clean(value, flags)


def canonical_copy(value: JsonValue, where: str = "value") -> JsonValue:
    """A checked deep copy in JSON form (tuples become lists): what a reader of the
    canonical bytes of `value` will see. One check and one encoding."""
    return orjson.loads(canonical_bytes(value, where))


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
    """RFC 8785 bytes of a value `check_json` accepts (not checked again here)."""
    flags = _scan(value, False)
    if flags & _DIRTY:
        return _jcs_reference(value)
    return _encode_clean(value, flags)


def _encode_clean(value: JsonValue, flags: int) -> bytes:
    """RFC 8785 bytes of a value the compiled pass cleared (exact JSON types, integers only,
    valid strings). For those, orjson with sorted keys writes exactly the JCS form — same
    escaping, same numbers — except for key order when a key holds a character beyond
    U+FFFF (JCS sorts by UTF-16 code units, orjson by code points): such values, and values
    nested deeper than orjson's limit (254), go through the reference `rfc8785` encoder."""
    if not flags & _ASTRAL_KEY:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # nested deeper than orjson's limit: the reference encoder handles it
    return _rfc8785(value)


def _jcs_reference(value: JsonValue) -> bytes:
    """RFC 8785 bytes of any value `check_json` accepts (subclasses of str, int, dict, list
    and tuple included): orjson where it provably writes JCS, else `rfc8785`. The
    equivalence is property-tested against `rfc8785` in tests/engine/test_canonical.py."""
    if _keys_in_bmp(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # nested deeper than orjson's limit (254): the reference encoder handles it
    return _rfc8785(value)


def _rfc8785(value: JsonValue) -> bytes:
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
    """Decode JSON artifact bytes, requiring canonical, float-free, secret-free content.

    One compiled pass over the bytes (`_jsonscan.check_bytes`) accepts what is exactly
    canonical and clean, and the value is then a plain `orjson.loads`; whatever it does not
    accept goes to the reference read (`_parse_canonical_reference`), which picks the
    error."""
    if _bytes_accepted(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # pragma: no cover - the pass accepts JSON only
            pass
    return _parse_canonical_reference(data, where)


def check_canonical_bytes(data: bytes, where: str = "artifact") -> None:
    """What `parse_canonical` checks — same errors, same order — without building the
    value: for callers that only need to know the stored bytes are valid."""
    if not _bytes_accepted(data):
        _parse_canonical_reference(data, where)


def _bytes_accepted(data: bytes) -> bool:
    """The compiled pass over the bytes accepts them (without it: never, the reference
    decides)."""
    return _jsonscan is not None and type(data) is bytes and _jsonscan.check_bytes(data) == 0


def _parse_canonical_reference(data: bytes, where: str) -> JsonValue:
    """The read's reference: decode, the read rules (a compiled pass over the value, the
    Python walk when it does not clear it), then the value's re-encoding must equal
    `data`."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Corruption("artifact_json_decode_failed", f"{where} is not valid JSON") from None
    flags = _scan(value, True)
    try:
        if flags & _DIRTY:
            _read_checks_reference(value, where)
            encoded = _jcs_reference(value)
        else:
            encoded = _encode_clean(value, flags)
    except RecursionError:
        # Deeper than the encoder's stack allows (nothing we write nests beyond
        # MAX_JSON_DEPTH): a structured error, never a crash.
        raise Corruption(
            "artifact_json_decode_failed", f"{where} nests too deeply to be read"
        ) from None
    if encoded != data:
        raise Corruption("artifact_not_canonical", f"{where} bytes are not canonical JSON")
    return value


def _read_checks_reference(value: JsonValue, where: str) -> None:
    """The read rules' reference definition: secrets first, then non-integer numbers."""
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


def json_dumps_pretty(value: JsonValue) -> str:
    """Human-friendly JSON for CLI output (not for hashing)."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
