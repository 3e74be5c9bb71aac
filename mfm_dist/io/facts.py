"""Reading and recording facts (docs/io-and-replay.md), shared by `LiveIo` and `ReplayIo`.

Facts are single-assignment per run. Every read goes through the verified
readers (`get_json` for JSON facts: hash, canonical form, no floats, no secrets;
`ArtifactStore.get` for raw random bytes: hash), so a tampered store is caught
on replay exactly as on a live retry.
"""

from __future__ import annotations

import orjson

from mfm_dist.artifacts import ArtifactKind, get_json
from mfm_dist.canonical import JsonValue, artifact_id_of_bytes, canonical_bytes
from mfm_dist.errors import CanonicalJsonError, Corruption, ErrorCategory, IoError, SecretsDetected
from mfm_dist.ids import ArtifactId
from mfm_dist.io.base import AttemptScope
from mfm_dist.secrets import is_secret_string, shown

DERIVED_KEY_PREFIX = "mfm:"
"""Reserved for keys the runtime derives (time, randomness); handlers never choose them."""

MAX_RANDOM_BYTES = 1 << 20


class FactPayloadConflict(IoError):
    """A bound key asked to hold a different payload: facts are single-assignment."""

    def __init__(self, key: str, reason: str = "is already bound to a different payload") -> None:
        super().__init__(
            "fact_payload_conflict",
            f"fact key {shown(key)} {reason}",
            category=ErrorCategory.PARSING_INPUT,
            details={"key": shown(key)},
        )


class FactPayloadNotCanonical(IoError):
    def __init__(self) -> None:
        super().__init__(
            "fact_payload_not_canonical",
            "a fact payload must be canonical JSON (no floats, integers within +/-(2^53-1))",
            category=ErrorCategory.PARSING_INPUT,
        )


def check_user_key(key: str) -> None:
    """A handler-chosen fact key: non-empty, secret-free (it is persisted), not reserved."""
    if not isinstance(key, str) or not key:
        raise IoError(
            "fact_key_invalid",
            "a fact key must be a non-empty string",
            category=ErrorCategory.PARSING_INPUT,
        )
    if is_secret_string(key):
        raise SecretsDetected("fact key")
    if key.startswith(DERIVED_KEY_PREFIX):
        raise IoError(
            "fact_key_reserved",
            f"fact keys starting with {DERIVED_KEY_PREFIX!r} are reserved for time and randomness",
            category=ErrorCategory.PARSING_INPUT,
        )


def fact_bytes(value: JsonValue) -> bytes:
    """Canonical bytes of a fact payload; secrets first, then floats/range/types."""
    try:
        return canonical_bytes(value, "fact payload")
    except SecretsDetected:
        raise
    except CanonicalJsonError:
        raise FactPayloadNotCanonical() from None


def decode_fact(data: bytes) -> JsonValue:
    """The value a handler sees: decoded from the canonical bytes, so live equals replay."""
    return orjson.loads(data)


def read_json_fact(scope: AttemptScope, payload_id: ArtifactId) -> JsonValue:
    return get_json(scope.artifacts, payload_id, "fact payload")


def read_raw_fact(scope: AttemptScope, payload_id: ArtifactId) -> bytes:
    return scope.artifacts.get(payload_id)


def lookup_json(scope: AttemptScope, key: str) -> JsonValue | None:
    payload_id = scope.facts.lookup(key)
    return None if payload_id is None else read_json_fact(scope, payload_id)


def bind_new(scope: AttemptScope, key: str, data: bytes) -> ArtifactId:
    """Store `data` and bind `key` to it; the caller holds `scope.facts.lock` and saw no binding.

    Kind is `FactPayload` for JSON and raw bytes alike (the kind never changes the id).
    """
    payload_id = scope.artifacts.put(ArtifactKind.FACT_PAYLOAD, data)
    scope.bind_fact(key, payload_id)
    return payload_id


def record_or_match(scope: AttemptScope, key: str, data: bytes) -> ArtifactId:
    """Bind `key` to `data` unless bound; bound to the same bytes is fine, else a conflict."""
    payload_id = artifact_id_of_bytes(data)
    with scope.facts.lock:
        existing = scope.facts.lookup(key)
        if existing is not None:
            if existing != payload_id:
                raise FactPayloadConflict(key)
            return existing
        return bind_new(scope, key, data)


def read_now_millis(scope: AttemptScope, payload_id: ArtifactId) -> int:
    value = read_json_fact(scope, payload_id)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Corruption("fact_payload_invalid", "a recorded now_millis fact is not an integer")
    return value


def check_random_len(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_RANDOM_BYTES:
        raise IoError(
            "random_bytes_invalid",
            f"random_bytes needs 0 <= n <= {MAX_RANDOM_BYTES}",
            category=ErrorCategory.PARSING_INPUT,
        )


def check_recorded_random(key: str, data: bytes, n: int) -> bytes:
    if len(data) != n:
        raise FactPayloadConflict(key, f"holds {len(data)} random bytes, not {n}")
    return data
