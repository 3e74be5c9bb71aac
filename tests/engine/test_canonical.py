"""Canonical JSON, hashing, the secrets policy and identifier grammar (docs/ids.md,
docs/canonical-json.md, docs/secrets.md)."""

from __future__ import annotations

import enum
import hashlib
import random
import uuid
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator
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
        def _put_raw(self, artifact_id: ArtifactId, kind: object, data: bytes) -> str:
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
