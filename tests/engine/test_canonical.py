"""Canonical JSON, hashing, the secrets policy and identifier grammar (docs/ids.md,
docs/canonical-json.md, docs/secrets.md)."""

from __future__ import annotations

import enum
import hashlib
import random
import re
import uuid
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import TypeAlias, TypeGuard

import orjson
import pytest
import rfc8785

from mfm_dist import InMemoryArtifactStore, get_json
from mfm_dist import canonical as canonical_module
from mfm_dist import secrets as secrets_module
from mfm_dist.artifacts import ArtifactKind, verify_content
from mfm_dist.canonical import (
    MAX_JSON_DEPTH,
    artifact_id_of_bytes,
    artifact_id_of_json,
    canonical_bytes,
    canonical_copy,
    check_canonical_bytes,
    check_json,
    parse_canonical,
)
from mfm_dist.context import StagedContext
from mfm_dist.errors import CanonicalJsonError, Corruption, InvalidId, MfmError, SecretsDetected
from mfm_dist.ids import ArtifactId, OpId, OpPath, RunId, StateId
from mfm_dist.secrets import SECRET_MARKERS, contains_secret, is_secret_string, redact_url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
        (
            {"z": [3, {"y": None, "x": True}], "a": "\u00e9"},
            '{"a":"é","z":[3,{"x":true,"y":null}]}'.encode(),
        ),
        ('tab\tquote"nl\n\u001f', b'"tab\\tquote\\"nl\\n\\u001f"'),
        ([], b"[]"),
        (2**53 - 1, b"9007199254740991"),
        (-(2**53 - 1), b"-9007199254740991"),
        (False, b"false"),
        # RFC 8785 sorts keys by UTF-16 code units: U+10000 (a surrogate pair) sorts before U+FB01.
        ({"\ufb01": 1, "\U00010000": 2}, '{"\U00010000":2,"\ufb01":1}'.encode()),
    ],
)
def test_canonical_vectors(value: object, expected: bytes) -> None:
    assert canonical_bytes(value) == expected


def test_sha256_of_hello() -> None:
    assert artifact_id_of_bytes(b"hello") == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    assert artifact_id_of_json({"b": 1, "a": 2}) == hashlib.sha256(b'{"a":2,"b":1}').hexdigest()


@pytest.mark.parametrize("bad", [1.0, 0.5, float("nan"), float("inf"), {"a": [1.5]}])
def test_floats_rejected(bad: object) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_bytes(bad)
    assert info.value.code == "float_not_allowed"


@pytest.mark.parametrize("bad", [2**53, -(2**53), {"n": 10**30}])
def test_out_of_range_integers_rejected(bad: object) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_bytes(bad)
    assert info.value.code == "integer_out_of_range"


def test_booleans_are_booleans() -> None:
    assert canonical_bytes([True, 1]) == b"[true,1]"
    assert artifact_id_of_json({"a": True}) != artifact_id_of_json({"a": 1})


def test_non_json_types_rejected() -> None:
    with pytest.raises(CanonicalJsonError):
        canonical_bytes({"a": object()})
    with pytest.raises(CanonicalJsonError):
        canonical_bytes({1: "a"})


def test_secrets_scan_runs_first() -> None:
    # A float *and* a secret: the secret verdict wins, and the value is not echoed.
    with pytest.raises(SecretsDetected) as info:
        canonical_bytes({"password": 1.5})
    assert "password" not in str(info.value)
    with pytest.raises(SecretsDetected):
        canonical_bytes({"note": "Bearer abc"})


@pytest.mark.parametrize(
    "text",
    [
        "my_password",
        "PassPhrase",
        "X-API-KEY",
        "aws_secret_access_key",
        "Authorization",
        "refresh_token",
        "bearer xyz",
        " ".join(["abandon"] * 12),
        " ".join(["zoo"] * 24),
    ],
)
def test_secret_shaped_strings(text: str) -> None:
    assert is_secret_string(text)


@pytest.mark.parametrize(
    "text",
    ["hello", "bearer", " ".join(["word"] * 11), " ".join(["word"] * 25), "Twelve Words " * 6],
)
def test_not_secret_shaped(text: str) -> None:
    assert not is_secret_string(text)


def test_secret_in_keys_and_nested_values() -> None:
    assert contains_secret({"outer": [{"api_key": 1}]})
    assert contains_secret(["ok", {"x": "access_token=1"}])
    assert not contains_secret({"a": ["b", {"c": 1}]})


def test_redact_url() -> None:
    assert redact_url("redis://user:hunter2@host:6379/0") == "redis://***@host:6379/0"
    assert (
        redact_url("s3://bucket/p?endpoint=http://h:9000") == "s3://bucket/p?endpoint=http://h:9000"
    )


def test_parse_canonical_codes() -> None:
    assert parse_canonical(b'{"a":1}') == {"a": 1}
    cases = {
        b'{"b":1,"a":2}': "artifact_not_canonical",
        b'{"a": 1}': "artifact_not_canonical",
        b'{"a":1.5}': "artifact_float_not_allowed",
        b'{"a":1.0}': "artifact_float_not_allowed",
        b'{"a":1e2}': "artifact_float_not_allowed",
        b'{"password":1}': "secrets_detected",
        b"{nope": "artifact_json_decode_failed",
    }
    for data, code in cases.items():
        with pytest.raises(Corruption) as info:
            parse_canonical(data)
        assert info.value.code == code, data


def test_verified_artifact_reads() -> None:
    store = InMemoryArtifactStore()
    aid = store.put(ArtifactKind.OUTPUT, b'{"a":1}')
    assert get_json(store, aid) == {"a": 1}
    # The kind never changes the id.
    assert store.put(ArtifactKind.FACT_PAYLOAD, b'{"a":1}') == aid
    store.tamper(aid, b'{"a":2}')
    with pytest.raises(Corruption) as info:
        get_json(store, aid)
    assert info.value.code == "artifact_content_address_mismatch"
    with pytest.raises(Corruption):
        verify_content(aid, b"other")


def test_put_id_mismatch_is_corruption() -> None:
    class LyingStore(InMemoryArtifactStore):
        def put_raw(self, artifact_id: ArtifactId, kind: object, data: bytes) -> str:
            return "0" * 64

    with pytest.raises(Corruption) as info:
        LyingStore().put(ArtifactKind.OUTPUT, b"x")
    assert info.value.code == "artifact_put_id_mismatch"


@pytest.mark.parametrize(
    ("cls", "good", "bad"),
    [
        (OpId, ["a", "fanout_demo", "a" * 63], ["", "A", "1a", "a-b", "a" * 64, "a.b", "é"]),
        (StateId, ["m.main.a", "m1.s_2.x_y"], ["m.main", "m.main.a.b", "m.Main.a", "m..a"]),
        (OpPath, ["m.main", "m.main.sub.x"], ["m", "m.", ".m.main"]),
        (ArtifactId, ["a" * 64, "0123456789abcdef" * 4], ["A" * 64, "a" * 63, "g" * 64]),
        (
            RunId,
            ["1b4e28ba-2fa1-41d2-883f-0e3b2f1b5b2a"],
            ["1B4E28BA-2FA1-41D2-883F-0E3B2F1B5B2A", "x"],
        ),
    ],
)
def test_identifier_grammar(
    cls: type[OpId | StateId | OpPath | ArtifactId | RunId], good: list[str], bad: list[str]
) -> None:
    for value in good:
        assert cls(value) == value
    for value in bad:
        with pytest.raises(InvalidId) as info:
            cls(value)
        assert info.value.info.message == f"invalid {cls.kind}: {value}"


def test_identifier_errors_never_echo_secrets() -> None:
    with pytest.raises(InvalidId) as info:
        StateId("my password")
    assert "password" not in str(info.value)


def test_ids_validated_on_deserialization() -> None:
    from pydantic import BaseModel

    class M(BaseModel):
        s: StateId

    with pytest.raises(ValueError, match="invalid state id: nope"):
        M.model_validate({"s": "nope"})
    assert isinstance(M.model_validate({"s": "m.main.a"}).s, StateId)


def test_minted_run_ids_are_uuid4() -> None:
    rid = RunId.mint()
    assert rid[14] == "4" and rid == rid.lower()


def test_fast_encoder_matches_rfc8785_reference() -> None:
    """`canonical_bytes` uses orjson where it provably writes JCS; compare with `rfc8785` on
    random structures full of escapes, BMP edge characters and astral keys."""
    rng = random.Random(8785)
    alphabet = [chr(i) for i in range(0x80)] + [
        "\u00e9", "\u2028", "\u2029", "\ufeff", "\ud7ff", "\ue000", "\uffff", "\U0001f600",
        "\u0085", "\u007f", "\U00010000",
    ]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    def value(depth: int = 0) -> Json:
        pick = rng.random()
        if depth > 3 or pick < 0.3:
            return rng.choice([None, True, False, rng.randint(-(2**53) + 1, 2**53 - 1), text()])
        if pick < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {text(): value(depth + 1) for _ in range(rng.randint(0, 4))}

    for _ in range(20_000):
        v = value()
        try:
            ours = canonical_bytes(v)
        except SecretsDetected:
            continue
        assert ours == rfc8785.dumps(v), v


# --- The compiled checks (mfm_dist/_jsonscan.c) against the Python reference -----------------
#
# `canonical_bytes`, `check_json`, `parse_canonical` and `contains_secret` clear values in one
# compiled pass and hand everything else to the pure-Python reference, which picks every error.
# The pass must be sound (what it clears, the reference accepts), complete on exact JSON types
# (else the fast path is never taken) and, for the secret rule, exactly `is_secret_string`.

scan_module = canonical_module._jsonscan
needs_compiled = pytest.mark.skipif(
    scan_module is None, reason="mfm_dist._jsonscan not built: see test_compiled_checks_are_built"
)


def test_compiled_checks_are_built() -> None:
    """CI builds the C extension (scripts/setup.sh); without it every value takes the slow
    pure-Python path, so a missing build must not go unnoticed."""
    assert scan_module is not None, "mfm_dist._jsonscan did not build: run scripts/setup.sh"
    assert secrets_module._jsonscan is scan_module


@contextmanager
def python_reference_only() -> Iterator[None]:
    """Switch the compiled pass off: every call takes the pure-Python reference path."""
    saved = canonical_module._jsonscan, secrets_module._jsonscan
    canonical_module._jsonscan = None  # type: ignore[assignment]
    secrets_module._jsonscan = None  # type: ignore[assignment]
    try:
        yield
    finally:
        canonical_module._jsonscan, secrets_module._jsonscan = saved


def outcome(fn: Callable[[], object]) -> tuple[str, object]:
    try:
        return ("ok", fn())
    except MfmError as exc:
        return ("error", (type(exc).__name__, exc.info.code, exc.info.message))


class Color(enum.Enum):
    RED = "red"
    NAN = float("nan")


class Level(enum.IntEnum):
    LOW = 1


class Text(str):
    pass


class Number(int):
    pass


Pair = namedtuple("Pair", "a b")

# Pieces random strings are made of: markers in several cases, words and whitespace for
# mnemonics (every kind of whitespace `str.split` knows, plus look-alikes), characters whose
# lowercase form is ASCII (U+212A KELVIN SIGN, U+0130), other non-ASCII letters, surrogates,
# astral characters and JSON escapes.
_WHITESPACE = [" ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\x85", "\xa0", "\u1680",
               "\u2000", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
_NOT_WHITESPACE = ["\u200b", "\x00", "\x7f", "\u180e", "\ufeff"]
_PIECES = (
    [m for m in SECRET_MARKERS]
    + [m.upper() for m in SECRET_MARKERS]
    + [m.title() for m in SECRET_MARKERS]
    + ["pass", "word", "api", "key", "Key", "_", "-", "x", "bear", "er", "seed", "phrase"]
    + ["api_\u212aey", "\u212aey", "pr\u0130vate_key", "passw\u00f6rd", "B\u0130\u0130"]
    + ["abandon", "zoo", "word", "ab", "Word", "w0rd", "caf\u00e9", "\u00e9", "\u00df", "\u212a"]
    + _WHITESPACE * 2
    + _NOT_WHITESPACE
    + ["\ud800", "\udfff", "\U0001f600", "\U00010000", "\ufb01", '"', "\\", "\u0130"]
)


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.25:  # a mnemonic-like run of words
        sep = rng.choice(_WHITESPACE + [" "] * 6)
        words = [rng.choice(["abandon", "zoo", "ab", "x", "Word", "w0rd", "\u212a"])
                 if rng.random() < 0.03 else rng.choice(["abandon", "zoo", "ab", "x", "legal"])
                 for _ in range(rng.randint(10, 26))]
        text = sep.join(words)
        if rng.random() < 0.3:
            text = rng.choice(_WHITESPACE) + text + rng.choice(_WHITESPACE)
        return text
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 5)))


def random_leaf(rng: random.Random, exotic: bool) -> object:
    pick = rng.random()
    if pick < 0.3:
        return random_text(rng)
    if pick < 0.5:
        return rng.choice([0, 1, -1, 2**53 - 1, -(2**53 - 1), rng.randint(-(10**6), 10**6)])
    if pick < 0.6 or not exotic:
        return rng.choice([None, True, False])
    return rng.choice([
        2**53, -(2**53), 2**64, -(2**70), 1.0, 0.5, -0.0, float("nan"), float("inf"),
        -float("inf"), Color.RED, Color.NAN, Level.LOW, uuid.UUID(int=7), Text("ok"),
        Text("password"), Number(3), b"bytes", orjson.Fragment(b"1"), object(), {1, 2},
    ])


def random_value(rng: random.Random, exotic: bool, depth: int = 0) -> object:
    pick = rng.random()
    if depth > 3 or pick < 0.3:
        return random_leaf(rng, exotic)
    n = rng.randint(0, 4)
    if pick < 0.5:
        return [random_value(rng, exotic, depth + 1) for _ in range(n)]
    if pick < 0.55:
        return tuple(random_value(rng, exotic, depth + 1) for _ in range(n))
    if exotic and pick < 0.6:
        return rng.choice([OrderedDict(a=1), Pair(1, "x"), {1: "int key"}, {Text("k"): 1}])
    return {random_text(rng): random_value(rng, exotic, depth + 1) for _ in range(n)}


# Exact JSON: what the compiled pass clears and the `rfc8785` reference encodes.
Json: TypeAlias = bool | int | str | list["Json"] | tuple["Json", ...] | dict[str, "Json"] | None


def exact_json(value: object) -> TypeGuard[Json]:
    """Made of exact dict/list/tuple/str/int/bool/None only (what the compiled pass clears)."""
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) in (list, tuple):
        return all(exact_json(v) for v in value)  # type: ignore[attr-defined]
    if type(value) is dict:
        return all(type(k) is str and exact_json(v) for k, v in value.items())
    return False


def reference_accepts(value: object, secrets: bool = True) -> bool:
    try:
        canonical_module._check_json_reference(value, "value", secrets=secrets)
    except (CanonicalJsonError, SecretsDetected):
        return False
    return True


@needs_compiled
def test_compiled_secret_rule_is_is_secret_string() -> None:
    rng = random.Random(9)
    texts = [random_text(rng) for _ in range(30_000)]
    texts += [m for m in SECRET_MARKERS] + ["\u212a" + "ey", "API_\u212aEY", "pr\u0130vate_key"]
    texts += [" ".join(["abandon"] * n) for n in (11, 12, 24, 25)]
    texts += ["\u3000".join(["zoo"] * 12), "\x85".join(["zoo"] * 12) + "\xa0", "zoo\u200b" * 12]
    for text in texts:
        expected = is_secret_string(text)
        assert scan_module.find_secret(text) == int(expected), ascii(text)
        assert scan_module.find_secret({text: 1}) == int(expected), ascii(text)
        flags = scan_module.scan([text], True)
        if expected:
            assert flags == 1, ascii(text)
        assert contains_secret([text]) is expected
    assert sum(is_secret_string(t) for t in texts) > 3_000  # the generator finds both kinds


def test_unicode_facts_the_compiled_rule_relies_on() -> None:
    """_jsonscan.c maps lowercase forms and whitespace through these facts (over every code
    point of this Python's Unicode database)."""
    lower_to_ascii = {
        chr(c): chr(c).lower()
        for c in range(0x80, 0x110000)
        if any(ord(x) < 0x80 for x in chr(c).lower())
    }
    assert lower_to_ascii == {"\u0130": "i\u0307", "\u212a": "k"}
    for c in range(0x80, 0x100):  # one byte per character: lower() stays in place, non-ASCII
        low = chr(c).lower()
        assert len(low) == 1 and ord(low) >= 0x80
    assert all(len(m) >= 2 and m.isascii() and m == m.lower() for m in SECRET_MARKERS)
    split_space = [c for c in range(0x110000) if len(("a" + chr(c) + "a").split()) == 2]
    assert split_space == [c for c in range(0x110000) if chr(c).isspace()]
    assert set(_WHITESPACE) <= {chr(c) for c in split_space}
    assert not set(_NOT_WHITESPACE) & {chr(c) for c in split_space}


@needs_compiled
def test_compiled_pass_is_sound_and_complete() -> None:
    rng = random.Random(10)
    cleared = 0
    for i in range(20_000):
        value = random_value(rng, exotic=i % 2 == 0)
        for secrets in (True, False):
            flags = scan_module.scan(value, secrets)
            accepted = reference_accepts(value, secrets)
            if flags != 1:
                assert accepted, value  # sound: never clears what the reference rejects
                cleared += 1
            elif exact_json(value):
                assert not accepted, value  # complete on exact JSON types
    assert cleared > 5_000


def test_fast_and_reference_paths_agree() -> None:
    """Same bytes, same ids, same errors (code and message) with and without the compiled pass,
    and the bytes are those of the reference `rfc8785` encoder."""
    rng = random.Random(11)
    for i in range(6_000):
        value = random_value(rng, exotic=i % 3 == 0)
        fast = outcome(partial(canonical_bytes, value, "ctx"))
        fast_check = outcome(partial(check_json, value, "ctx"))
        fast_copy = outcome(partial(canonical_copy, value, "ctx"))
        with python_reference_only():
            slow = outcome(partial(canonical_bytes, value, "ctx"))
            slow_check = outcome(partial(check_json, value, "ctx"))
            slow_copy = outcome(partial(canonical_copy, value, "ctx"))
        assert fast == slow, value
        assert fast_check == slow_check, value
        assert fast_copy == slow_copy, value
        if fast[0] == "ok" and exact_json(value):
            assert fast[1] == rfc8785.dumps(value), value


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (float("nan"), "float_not_allowed"),
        ({"a": [float("inf")]}, "float_not_allowed"),
        ([-float("inf")], "float_not_allowed"),
        ({"a": 1.0}, "float_not_allowed"),
        ({"c": Color.NAN}, "json_type_not_supported"),
        ({"c": Color.RED}, "json_type_not_supported"),
        ({"u": uuid.UUID(int=1)}, "json_type_not_supported"),
        ({"f": orjson.Fragment(b'{"b":1,"a":2}')}, "json_type_not_supported"),
        ({"b": b"x"}, "json_type_not_supported"),
        ({"s": {1, 2}}, "json_type_not_supported"),
        ({1: 2}, "json_key_not_string"),
        ({"s": "\ud800"}, "json_string_invalid"),
        ({"\udc00": 1}, "json_string_invalid"),
        ([2**53], "integer_out_of_range"),
        ({"n": -(2**64)}, "integer_out_of_range"),
    ],
)
def test_values_orjson_would_encode_silently_are_rejected(value: object, code: str) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        canonical_bytes(value)
    assert info.value.code == code
    with pytest.raises(CanonicalJsonError):
        check_json(value)


@pytest.mark.parametrize(
    "text",
    [
        "api_\u212aey",  # KELVIN SIGN lowers to "k"
        "PASSWORD",
        "My Bearer token",
        "\u3000".join(["abandon"] * 12),  # ideographic spaces split words too
        "\xa0" + "\x85".join(["zoo"] * 24),
        "x" * 5000 + "seed phrase" + "\u00e9" * 10,
        "\u4e2d" * 300 + "aws_secret_access_key",
    ],
)
def test_secret_shapes_the_compiled_scan_must_catch(text: str) -> None:
    assert is_secret_string(text)
    with pytest.raises(SecretsDetected):
        canonical_bytes({"k": [text]})
    with pytest.raises(SecretsDetected):
        canonical_bytes({text: 1})
    with pytest.raises(Corruption) as info:
        parse_canonical(orjson.dumps({"k": text}))
    assert info.value.code == "secrets_detected"
    assert contains_secret({"a": ({"b": text},)})


@pytest.mark.parametrize(
    "text",
    [
        "pr\u0130vate_key",  # U+0130 lowers to "i" + U+0307: no marker
        "\u212a" * 40,
        " ".join(["abandon"] * 25),
        "\u200b".join(["abandon"] * 12),  # ZERO WIDTH SPACE is not whitespace
        "abandon " * 11 + "Abandon",
        "caf\u00e9 " * 12,
    ],
)
def test_near_misses_pass(text: str) -> None:
    assert not is_secret_string(text)
    assert canonical_bytes([text]) == rfc8785.dumps([text])
    assert not contains_secret({text: [text]})


def test_subclasses_keep_their_reference_behaviour() -> None:
    value = {"a": Text("x"), "b": Number(5), "c": OrderedDict(z=1, y=2), "d": Level.LOW}
    assert canonical_bytes(value) == b'{"a":"x","b":5,"c":{"y":2,"z":1},"d":1}'
    with pytest.raises(SecretsDetected):
        canonical_bytes([Text("password")])
    assert contains_secret([Text("password")])
    assert contains_secret({Text("api_key"): 1})
    assert not contains_secret(OrderedDict(a="b"))


def nested(depth: int) -> Json:
    """Lists nested so that the innermost one sits at `depth` (the outermost at 0)."""
    value: Json = []
    for _ in range(depth):
        value = [value]
    return value


def test_depth_limit_and_cycles() -> None:
    deep_ok = nested(MAX_JSON_DEPTH - 1)  # innermost container at depth 511
    assert canonical_bytes(deep_ok) == rfc8785.dumps(deep_ok)  # beyond orjson's 254: rfc8785
    if scan_module is not None:
        assert scan_module.scan(deep_ok, True) == 0
    with pytest.raises(CanonicalJsonError) as info:
        canonical_bytes(nested(MAX_JSON_DEPTH))
    assert info.value.code == "json_too_deep"
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(CanonicalJsonError) as info:
        canonical_bytes({"a": loop})
    assert info.value.code == "json_too_deep"


def test_astral_keys_sort_by_utf16() -> None:
    value: Json = {"\ufb01": 1, "\U00010000": {"\uffff": 2, "\U0001f600": 3}, "a": "\U0001f600"}
    if scan_module is not None:
        assert scan_module.scan(value, True) == 2  # clean, with a key beyond U+FFFF
        assert scan_module.scan({"a": "\U0001f600"}, True) == 0  # astral values need no reorder
    assert canonical_bytes(value) == rfc8785.dumps(value)
    data = rfc8785.dumps(value)
    assert parse_canonical(data) == value


def test_parse_canonical_fast_path_codes() -> None:
    cases = {
        b'{"a":9007199254740992}': "artifact_float_not_allowed",
        b'{"a":-9007199254740992}': "artifact_float_not_allowed",
        b'{"a":18446744073709551615}': "artifact_float_not_allowed",
        b'{"a":-0}': "artifact_not_canonical",
        b'{"a":"\\u0050assword"}': "secrets_detected",
        b'{"k":"\xe2\x84\xaaey api_\xe2\x84\xaaey"}': "secrets_detected",
        b'{"a":"\\u00e9"}': "artifact_not_canonical",
        b'{"a":1,"a":2}': "artifact_not_canonical",
        b'{"\xef\xac\x81":1,"\xf0\x90\x80\x80":2}': "artifact_not_canonical",
        b'[1E2]': "artifact_float_not_allowed",
        b'[1.5, "password"]': "secrets_detected",
    }
    for data, code in cases.items():
        with pytest.raises(Corruption) as info:
            parse_canonical(data)
        assert info.value.code == code, data
        with python_reference_only(), pytest.raises(Corruption) as slow:
            parse_canonical(data)
        assert (slow.value.code, slow.value.info.message) == (code, info.value.info.message)
    ok = b'{"\xf0\x90\x80\x80":2,"\xef\xac\x81":1}'
    assert parse_canonical(ok) == {"\ufb01": 1, "\U00010000": 2}


def test_parse_canonical_round_trips_random_values() -> None:
    rng = random.Random(12)
    for _ in range(3_000):
        value = random_value(rng, exotic=False)
        try:
            data = canonical_bytes(value)
        except (SecretsDetected, CanonicalJsonError):
            continue
        assert parse_canonical(data) == orjson.loads(data)
        with python_reference_only():
            assert parse_canonical(data) == orjson.loads(data)


def test_contains_secret_agrees_with_the_reference() -> None:
    rng = random.Random(13)
    for i in range(6_000):
        value = random_value(rng, exotic=i % 2 == 0)
        fast = contains_secret(value)
        with python_reference_only():
            assert contains_secret(value) is fast, value


def test_context_set_checks_and_copies_once() -> None:
    ctx = StagedContext({})
    original = {"t": (1, [2]), "s": "x"}
    ctx.set("v", original)
    assert ctx.get("v") == {"t": [1, [2]], "s": "x"}
    original["s"] = "changed"
    assert ctx.get("v")["s"] == "x"
    for bad, error in [
        (1.5, CanonicalJsonError),
        (float("nan"), CanonicalJsonError),
        ({"note": "Bearer abc"}, SecretsDetected),
        (uuid.UUID(int=3), CanonicalJsonError),
        (nested(MAX_JSON_DEPTH - 1), CanonicalJsonError),  # one level deeper below the key
    ]:
        with pytest.raises(error):
            ctx.set("w", bad)
    assert "w" not in ctx


# --- Verified reads on bytes (`_jsonscan.check_bytes`) against the reference read -----------
#
# `parse_canonical` and `check_canonical_bytes` accept bytes the compiled pass over the bytes
# accepts (then `orjson.loads` for the value) and hand everything else to the reference read
# (decode, the read rules, re-encode and compare). The pass must accept exactly what the read
# rules accept — canonical RFC 8785 bytes, integers within range, no secret-shaped key or
# string — and the results (values, codes, messages) must be those of the reference. The
# reference here is spelled out independently: `orjson.loads`, `is_secret_string` over every
# key and string, the range rule, then `rfc8785.dumps` must give back the bytes.

B_CANONICAL, B_REJECT, B_SECRET, B_DEEP = 0, 1, 2, 3


def read_rules_code(data: bytes) -> str | None:
    """The read rules from their definitions (docs/canonical-json.md#verified-reads): the
    error code for `data`, None when it is accepted."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "artifact_json_decode_failed"
    if any(is_secret_string(s) for s in secrets_module.iter_strings(value)):
        return "secrets_detected"
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) or (
            type(item) is int and abs(item) > canonical_module.MAX_SAFE_INTEGER
        ):
            return "artifact_float_not_allowed"
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None if rfc8785.dumps(value) == data else "artifact_not_canonical"


def code_of(result: tuple[str, object]) -> str | None:
    if result[0] == "ok":
        return None
    detail = result[1]
    assert isinstance(detail, tuple)
    return str(detail[1])


def assert_reads_agree(data: bytes) -> tuple[int, str | None]:
    """`parse_canonical` and `check_canonical_bytes` with the compiled passes and without
    them give the same results; the bytes pass's verdict and the code are the rules'."""
    assert scan_module is not None
    fast = outcome(partial(parse_canonical, data, "doc"))
    fast_check = outcome(partial(check_canonical_bytes, data, "doc"))
    with python_reference_only():
        slow = outcome(partial(parse_canonical, data, "doc"))
        slow_check = outcome(partial(check_canonical_bytes, data, "doc"))
    assert fast == slow, data
    assert fast_check == slow_check == ((fast[0], None) if fast[0] == "ok" else fast), data
    verdict = scan_module.check_bytes(data)
    code = code_of(fast)
    assert code == read_rules_code(data), data
    if verdict != B_DEEP:  # nesting beyond the rule's limit: the reference read decides
        assert (verdict == B_CANONICAL) == (code is None), (data, verdict)
    if verdict == B_SECRET:
        assert code in ("secrets_detected", "artifact_json_decode_failed"), data
    if fast[0] == "ok":
        assert fast[1] == orjson.loads(data)
    return verdict, code


# Characters for keys and strings: every escape JCS writes (short forms, \u00xx), the ones it
# does not ('/', U+007F, U+2028), characters on both sides of the UTF-8/UTF-16 order split
# (U+D7FF, U+E000-U+FFFF, beyond U+FFFF), and the two whose lowercase form holds ASCII.
_TRICKY = [chr(c) for c in range(0x20)] + [
    " ", '"', "\\", "/", "/", "A", "Z", "a", "z", "~", "\x7f", "\x80", "\u00e9", "\u0130",
    "\u212a", "\u2028", "\ud7ff", "\ue000", "\ufb01", "\uffff", "\U00010000", "\U0001f600",
    "\U0010ffff", "ab", "key", "id", "x",
]


def doc_text(rng: random.Random) -> str:
    if rng.random() < 0.03:
        return random_text(rng)  # secret-shaped, mnemonic-like and surrogate-holding texts
    return "".join(rng.choice(_TRICKY) for _ in range(rng.randint(0, 4)))


def doc_value(rng: random.Random, depth: int = 0) -> Json:
    pick = rng.random()
    if depth > 3 or pick < 0.35:
        return rng.choice([
            None, True, False, 0, -1, 7, 10, 2**53 - 1, -(2**53 - 1), 2**53 - 10,
            rng.randint(-(2**53) + 1, 2**53 - 1), rng.randint(-1000, 1000), doc_text(rng),
        ])
    n = rng.randint(0, 4)
    if pick < 0.6:
        return [doc_value(rng, depth + 1) for _ in range(n)]
    return {doc_text(rng): doc_value(rng, depth + 1) for _ in range(n)}


def shuffled(value: Json, rng: random.Random) -> Json:
    """The same value with every object's keys in a random insertion order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NUMBER = re.compile(rb"-?[0-9]+")
_OBJECT_START = re.compile(rb'\{("(?:[^"\\]|\\.)*"):', re.DOTALL)
_NUMBER_FORMS = [
    b"-0", b"0", b"00", b"01", b"-01", b"+1", b"1.0", b"1.5", b"1e2", b"1E2", b"1e0", b"-1e-2",
    b"0.0", b"-0.0", b"9007199254740991", b"-9007199254740991", b"9007199254740992",
    b"-9007199254740992", b"18446744073709551616", b"99999999999999999999", b"1e400", b"-",
    b"1.", b".5", b"Infinity", b"NaN",
]
_BAD_UTF8 = [
    b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xc2", b"\xe0\x80\xaf", b"\xe0\x9f\xbf",
    b"\xe2\x82", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xa0\xbd\xed\xb8\x80",
    b"\xf0\x8f\xbf\xbf", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xfe",
    b"\xff",
]
_SURROGATE_ESCAPES = [b"\\ud800", b"\\udfff", b"\\uDBFF", b"\\ud83d\\ude00", b"\\ud800\\u0041"]
_SECRET_BYTES = [
    b"password", b"PassWord", b"api_\xe2\x84\xaaey", b"pr\xc4\xb0vate_key", b"Bearer ",
    b"bearer", b"\\bearer ", b"\\u0050assword", b"x-api-key", b"seed phrase",
    b" abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon",
]
_NOISE = b'{}[]:,"\\0123456789-+.eEtrufalsn \n\tu'


_CHARACTER = re.compile(rb"\\u[0-9a-fA-F]{4}|\\.|[\x00-\x7f]|[\xc0-\xff][\x80-\xbf]*|[\x80-\xbf]",
                        re.DOTALL)
_SHORT_FORMS = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"',
                "\\": "\\\\"}


def escape_one(rng: random.Random, text: bytes) -> bytes:
    """A string token with one character written otherwise: \\u0041 for A, \\u000a for
    \\n, uppercase hex, \\/, \\u escapes (surrogate pairs beyond U+FFFF) of non-ASCII
    text, a raw control character, or the canonical spelling again."""
    body = text[1:-1]
    spans = list(_CHARACTER.finditer(body))
    if not spans:
        return b'"\\u0041"'
    m = rng.choice(spans)
    try:
        char = orjson.loads(b'"' + m.group() + b'"')
    except orjson.JSONDecodeError:  # an earlier mutation broke it
        return text
    units = char.encode("utf-16-be", "surrogatepass")
    escaped = "".join(f"\\u{units[k:k + 2].hex()}" for k in range(0, len(units), 2))
    spellings = [escaped, escaped.upper().replace("\\U", "\\u"), orjson.dumps(char)[1:-1].decode()]
    spellings += [_SHORT_FORMS.get(char, char), "\\/" if char == "/" else char]
    written = rng.choice(spellings).encode("utf-8", "surrogatepass")
    return b'"' + body[: m.start()] + written + body[m.end() :] + b'"'


def mutate(rng: random.Random, data: bytes, value: Json) -> bytes:
    """One random change of canonical bytes, mostly one of the ways bytes can be almost
    canonical."""
    pos = rng.randrange(len(data) + 1)
    strings = list(_STRING.finditer(data))
    kind = rng.randrange(12)
    if kind == 0:  # insignificant (or, inside a string, significant) whitespace
        return data[:pos] + rng.choice([b" ", b"\n", b"\t", b"\r", b"  "]) + data[pos:]
    if kind == 1:  # key order: insertion order, or code point order (orjson's)
        if rng.random() < 0.5:
            return orjson.dumps(shuffled(value, rng))
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if kind == 2 and strings:  # an escape JCS does not write
        m = rng.choice(strings)
        return data[: m.start()] + escape_one(rng, m.group()) + data[m.end() :]
    if kind == 3:  # a number written otherwise
        numbers = list(_NUMBER.finditer(data))
        if numbers:
            m = rng.choice(numbers)
            form = rng.choice([*_NUMBER_FORMS, m.group() + b".0", b"0" + m.group(),
                               b"-" + m.group(), m.group() + b"e0", m.group() + b"0"])
            return data[: m.start()] + form + data[m.end() :]
    if kind == 4:  # a duplicate key
        objects = list(_OBJECT_START.finditer(data))
        if objects:
            m = rng.choice(objects)
            dup = m.group(1) + b":" + rng.choice([b"0", b"null", b'"x"', b"[]"]) + b","
            at = m.start() + 1
            return data[:at] + dup + data[at:]
    if kind == 5:  # invalid UTF-8, or a multi-byte character cut short
        high = [i for i, b in enumerate(data) if b >= 0xC0]
        if high and rng.random() < 0.3:
            i = rng.choice(high)
            return data[: i + 1] + data[i + 2 :]
        return data[:pos] + rng.choice(_BAD_UTF8) + data[pos:]
    if kind == 6 and strings:  # a surrogate escape inside a string
        m = rng.choice(strings)
        at = rng.randrange(m.start() + 1, m.end())
        if data[at - 1 : at] == b"\\":
            at -= 1
        return data[:at] + rng.choice(_SURROGATE_ESCAPES) + data[at:]
    if kind == 7 and strings:  # secret-shaped text inside a string or key
        m = rng.choice(strings)
        at = rng.randrange(m.start() + 1, m.end())
        if data[at - 1 : at] == b"\\":
            at -= 1
        return data[:at] + rng.choice(_SECRET_BYTES) + data[at:]
    if kind == 8 and strings:  # other plain text inside a string: still canonical?
        m = rng.choice(strings)
        at = rng.randrange(m.start() + 1, m.end())
        if data[at - 1 : at] == b"\\":
            at -= 1
        plain = rng.choice([b"a", b"~", b"\x7f", b"\xc3\xa9", b"\xee\x80\x80"])
        return data[:at] + plain + data[at:]
    if kind == 9 and data:  # a byte removed, doubled or replaced
        i = rng.randrange(len(data))
        how = rng.randrange(3)
        if how == 0:
            return data[:i] + data[i + 1 :]
        if how == 1:
            return data[: i + 1] + data[i:]
        return data[:i] + bytes([rng.choice(_NOISE)]) + data[i + 1 :]
    if kind == 10:  # cut short, or something after the value
        if rng.random() < 0.5:
            return data[:pos]
        return data + rng.choice([b"", b" ", b"\n", b"0", b",1", b"]", b"}", b"\x00"])
    return data[:pos] + bytes([rng.choice(_NOISE)]) + data[pos:]


@needs_compiled
def test_byte_reads_agree_with_the_reference_on_mutated_bytes() -> None:
    rng = random.Random(8785_10)
    seen: dict[object, int] = {}
    for i in range(16_000):
        value = doc_value(rng)
        try:
            data = rfc8785.dumps(value)  # canonical, secret-shaped or not
        except (rfc8785.CanonicalizationError, UnicodeEncodeError):
            continue  # a lone surrogate: no bytes to start from
        for _ in range(1 if i % 4 == 0 else rng.randint(1, 2)):
            if i % 4:
                data = mutate(rng, data, value)
        verdict, code = assert_reads_agree(data)
        seen[code] = seen.get(code, 0) + 1
        seen[verdict] = seen.get(verdict, 0) + 1
    # Every outcome is exercised, and many mutants stay canonical.
    for code in (None, "artifact_json_decode_failed", "secrets_detected",
                 "artifact_float_not_allowed", "artifact_not_canonical"):
        assert seen.get(code, 0) > 300, seen
    assert seen.get(B_SECRET, 0) > 300, seen


@needs_compiled
def test_byte_reads_of_random_canonical_values() -> None:
    """Canonical bytes of random values (the compiled pass's generator: secrets, mnemonics,
    every whitespace, astral keys) are accepted exactly when no key or string is
    secret-shaped and every integer is in range."""
    rng = random.Random(14)
    accepted = 0
    for _ in range(8_000):
        value = random_value(rng, exotic=False)
        assert exact_json(value)
        try:
            data = rfc8785.dumps(value)
        except (rfc8785.CanonicalizationError, UnicodeEncodeError):
            continue
        verdict, code = assert_reads_agree(data)
        accepted += verdict == B_CANONICAL
        assert code in (None, "secrets_detected", "artifact_float_not_allowed"), data
    assert accepted > 2_000


@needs_compiled
def test_byte_secret_rule_is_is_secret_string() -> None:
    """The secret rule on a string's raw bytes (escapes, non-ASCII, U+0130, U+212A) is
    `is_secret_string` of the decoded text, as a value and as a key."""
    assert scan_module is not None
    rng = random.Random(15)
    texts = [random_text(rng) for _ in range(30_000)]
    texts += ["".join(rng.choice(_TRICKY + list(_PIECES)) for _ in range(rng.randint(1, 8)))
              for _ in range(10_000)]
    texts += ["\bearer x", "\x08earer ", "\npassword", "pass\nword", "\\password", "x\x00api_key",
              "\t".join(["abandon"] * 12), "\x1c".join(["zoo"] * 12) + "\x1f",
              "\x0b".join(["zoo"] * 12), "\x00".join(["zoo"] * 12), "\u2028".join(["ab"] * 12),
              "\x85".join(["ab"] * 12), "api_\u212aey", "API_\u212aEY\n", "pr\u0130vate_key",
              "\u0130d_token", "\u212a" * 3, "a\u0130d_token"]
    secret = 0
    for text in texts:
        try:
            as_value, as_key = rfc8785.dumps([text]), rfc8785.dumps({text: 1})
        except (rfc8785.CanonicalizationError, UnicodeEncodeError):
            continue  # a lone surrogate
        expected = B_SECRET if is_secret_string(text) else B_CANONICAL
        assert scan_module.check_bytes(as_value) == expected, ascii(text)
        assert scan_module.check_bytes(as_key) == expected, ascii(text)
        secret += expected == B_SECRET
    assert secret > 5_000


@needs_compiled
def test_byte_key_order_is_utf16_order() -> None:
    """Keys must ascend by UTF-16 code units: code point order (orjson's) differs once a key
    holds a character beyond U+FFFF and another one from U+E000 up; escaped control
    characters sort first; equal keys are duplicates."""
    assert scan_module is not None
    rng = random.Random(16)
    alphabet = ["\x00", "\x1f", "\n", " ", '"', "\\", "a", "\x7f", "\u00e9", "\ud7ff", "\ue000",
                "\uffff", "\U00010000", "\U0001f600", "\U0010ffff"]
    differs = 0
    for _ in range(5_000):
        keys = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))
                for _ in range(rng.randint(2, 5))}
        value = dict.fromkeys(keys, 0)
        jcs = rfc8785.dumps(value)
        assert scan_module.check_bytes(jcs) == B_CANONICAL, jcs
        by_code_point = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if by_code_point != jcs:
            differs += 1
            assert scan_module.check_bytes(by_code_point) == B_REJECT, by_code_point
        ordered = sorted(keys, key=lambda k: k.encode("utf-16-be"))
        first = rfc8785.dumps(ordered[0])
        assert scan_module.check_bytes(b"{" + first + b":0," + first + b":0}") == B_REJECT
        if len(ordered) > 1:
            swapped = b"{" + rfc8785.dumps(ordered[1]) + b":0," + first + b":0}"
            assert scan_module.check_bytes(swapped) == B_REJECT, swapped
    assert differs > 100


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b'{"a":1}', B_CANONICAL),
        (b"0", B_CANONICAL),
        (b"-1", B_CANONICAL),
        (b'"x"', B_CANONICAL),
        (b"null", B_CANONICAL),
        (b"[true,false,null,[],{}]", B_CANONICAL),
        (b'"\\u001f\\u0000\\b\\f\\n\\r\\t\\"\\\\\x7f\xe2\x80\xa8/"', B_CANONICAL),
        (b"9007199254740991", B_CANONICAL),
        (b"-9007199254740991", B_CANONICAL),
        (b"9007199254740992", B_REJECT),
        (b"-0", B_REJECT),
        (b"01", B_REJECT),
        (b"1.0", B_REJECT),
        (b"1e2", B_REJECT),
        (b"", B_REJECT),
        (b" 1", B_REJECT),
        (b"1 ", B_REJECT),
        (b"[1,]", B_REJECT),
        (b'{"a":1,}', B_REJECT),
        (b'{"a"}', B_REJECT),
        (b"nul", B_REJECT),
        (b"True", B_REJECT),
        (b'"\\u001F"', B_REJECT),
        (b'"\\u000a"', B_REJECT),
        (b'"\\u0041"', B_REJECT),
        (b'"\\u007f"', B_REJECT),
        (b'"\\/"', B_REJECT),
        (b'"\\ud800"', B_REJECT),
        (b'"\xed\xa0\x80"', B_REJECT),
        (b'"\xc0\xaf"', B_REJECT),
        (b'"\xf4\x90\x80\x80"', B_REJECT),
        (b'"\x1f"', B_REJECT),
        (b'"abc', B_REJECT),
        (b'{"b":1,"a":2}', B_REJECT),
        (b'{"a":1,"a":1}', B_REJECT),
        (b'{"\xef\xac\x81":1,"\xf0\x90\x80\x80":2}', B_REJECT),
        (b'{"\xf0\x90\x80\x80":2,"\xef\xac\x81":1}', B_CANONICAL),
        (b'{"\\n":1,"!":2}', B_CANONICAL),
        (b'{"!":1,"\\n":2}', B_REJECT),
        (b'{"Password":1}', B_SECRET),
        (b'["api_\xe2\x84\xaaey"]', B_SECRET),
        (b'["pr\xc4\xb0vate_key"]', B_CANONICAL),
        (b'["\\bearer x"]', B_CANONICAL),
        (b'["\\nbearer x"]', B_SECRET),
        (b"[" * 512 + b"]" * 512, B_CANONICAL),
        (b"[" * 513 + b"]" * 513, B_DEEP),
    ],
)
def test_byte_verdicts(data: bytes, verdict: int) -> None:
    if scan_module is not None:
        assert scan_module.check_bytes(data) == verdict
        assert_reads_agree(data)
    accepted = verdict in (B_CANONICAL, B_DEEP)
    assert (outcome(partial(check_canonical_bytes, data))[0] == "ok") is accepted


def test_byte_reads_beyond_the_depth_limit_are_the_reference_reads() -> None:
    """Reads do not refuse nesting by themselves: the bytes pass leaves deep documents to the
    reference read, which accepts canonical ones and reports the rest as before."""
    for depth in (510, 511, 512, 513, 514, 600):
        for inner in (b"", b"1", b'"password"', b"1.5", b" ", b'{"b":1,"a":2}'):
            data = b"[" * depth + inner + b"]" * depth
            if scan_module is not None:
                assert_reads_agree(data)
            else:
                check_canonical_bytes(data) if inner in (b"", b"1") else None
        obj = b'{"a":' * depth + b"0" + b"}" * depth
        assert parse_canonical(obj) is not None
        check_canonical_bytes(obj)


def test_byte_reads_of_other_buffers_take_the_reference() -> None:
    """Only `bytes` go through the bytes pass; other buffers get the reference read, as
    before (a bytearray of canonical bytes compares equal to them)."""
    assert parse_canonical(bytearray(b'{"a":1}')) == {"a": 1}  # type: ignore[arg-type]
    check_canonical_bytes(memoryview(b"[1]"))  # type: ignore[arg-type]
    with pytest.raises(Corruption) as info:
        check_canonical_bytes(bytearray(b"[1.5]"))  # type: ignore[arg-type]
    assert info.value.code == "artifact_float_not_allowed"
    if scan_module is not None:
        with pytest.raises(TypeError):
            scan_module.check_bytes(bytearray(b"1"))  # type: ignore[arg-type]


def test_check_canonical_bytes_codes() -> None:
    check_canonical_bytes(b'{"a":1}')
    for data, code in {
        b'{"b":1,"a":2}': "artifact_not_canonical",
        b'{"a": 1}': "artifact_not_canonical",
        b'{"a":1.5}': "artifact_float_not_allowed",
        b'{"a":9007199254740992}': "artifact_float_not_allowed",
        b'{"password":1}': "secrets_detected",
        b'[1.5, "password"]': "secrets_detected",
        b"{nope": "artifact_json_decode_failed",
        b'["\\ud800"]': "artifact_json_decode_failed",
    }.items():
        with pytest.raises(Corruption) as info:
            check_canonical_bytes(data, "fact payload")
        assert info.value.code == code, data
        with python_reference_only(), pytest.raises(Corruption) as slow:
            check_canonical_bytes(data, "fact payload")
        assert (slow.value.code, slow.value.info.message) == (code, info.value.info.message)


@needs_compiled
def test_byte_reads_of_large_documents_in_threads() -> None:
    """Long inputs are checked without the GIL: verdicts stay those of the reference, also
    with several threads checking at once."""
    assert scan_module is not None
    rng = random.Random(17)
    value: dict[str, Json] = {}
    while len(value) < 360:
        item: list[Json] = [doc_value(rng) for _ in range(3)]
        try:
            rfc8785.dumps(item)
        except (rfc8785.CanonicalizationError, UnicodeEncodeError):
            continue  # a lone surrogate
        if not contains_secret(item):
            value[f"k{len(value):05d}"] = item
    data = rfc8785.dumps(value)
    assert len(data) > 65_536, len(data)
    variants = [data] + [mutate(rng, data, value) for _ in range(15)]
    expected = [assert_reads_agree(d)[0] for d in variants]
    assert expected.count(B_CANONICAL) >= 1 and expected.count(B_REJECT) >= 3
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(scan_module.check_bytes, variants)) == expected


@pytest.mark.parametrize("depth", [1000, 1023, 1030, 5000])
def test_a_read_too_deep_to_decode_is_a_structured_error_not_a_crash(depth: int) -> None:
    """Nothing we write nests beyond MAX_JSON_DEPTH; stored bytes nested deeper than the
    decoder or the reference encoder can walk are `artifact_json_decode_failed`, never a
    RecursionError."""
    for data in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"0" + b"}" * depth):
        for read in (parse_canonical, check_canonical_bytes):
            with pytest.raises(Corruption) as info:
                read(data)
            assert info.value.code == "artifact_json_decode_failed"
