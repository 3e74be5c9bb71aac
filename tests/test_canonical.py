"""Canonical JSON, hashing, the secrets policy and identifier grammar (docs/ids.md, docs/canonical-json.md, docs/secrets.md)."""

from __future__ import annotations

import hashlib

import pytest

from mfm_dist import InMemoryArtifactStore, get_json
from mfm_dist.artifacts import ArtifactKind, verify_content
from mfm_dist.canonical import (
    artifact_id_of_bytes,
    artifact_id_of_json,
    canonical_bytes,
    parse_canonical,
)
from mfm_dist.errors import CanonicalJsonError, Corruption, InvalidId, SecretsDetected
from mfm_dist.ids import ArtifactId, OpId, OpPath, RunId, StateId
from mfm_dist.secrets import contains_secret, is_secret_string, redact_url


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
def test_identifier_grammar(cls: type, good: list[str], bad: list[str]) -> None:
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
    import random

    import rfc8785

    rng = random.Random(8785)
    alphabet = [chr(i) for i in range(0x80)] + [
        "\u00e9", "\u2028", "\u2029", "\ufeff", "\ud7ff", "\ue000", "\uffff", "\U0001f600",
        "\u0085", "\u007f", "\U00010000",
    ]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    def value(depth: int = 0) -> object:
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
