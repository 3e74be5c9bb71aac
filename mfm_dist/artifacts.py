"""Content-addressed artifacts: kinds, the store interface, verified IO.

Specified in docs/canonical-json.md and docs/storage.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import Enum
from typing import Annotated

from pydantic import Tag

from mfm_dist.canonical import JsonValue, artifact_id_of_bytes, canonical_bytes, parse_canonical
from mfm_dist.errors import Corruption, StorageError
from mfm_dist.ids import ArtifactId
from mfm_dist.tagged import NewtypeVariant, tag_discriminator


class ArtifactKind(str, Enum):
    MANIFEST = "Manifest"
    CONTEXT_SNAPSHOT = "ContextSnapshot"
    FACT_PAYLOAD = "FactPayload"
    SECRET_PAYLOAD = "SecretPayload"
    OUTPUT = "Output"


class OtherArtifactKind(NewtypeVariant):
    TAG_PATH = ("Other",)


AnyArtifactKind = Annotated[
    Annotated[ArtifactKind, Tag("unit")] | Annotated[OtherArtifactKind, Tag("Other")],
    tag_discriminator(
        {"Manifest", "ContextSnapshot", "FactPayload", "SecretPayload", "Output", "Other"}
    ),
]
KindLike = ArtifactKind | OtherArtifactKind


def kind_label(kind: KindLike) -> str:
    """A flat string for metadata columns: `Manifest`, …, `Other:name`."""
    if isinstance(kind, OtherArtifactKind):
        return f"Other:{kind.value}"
    return kind.value


def kind_from_label(label: str) -> KindLike:
    if label.startswith("Other:"):
        return OtherArtifactKind(value=label[len("Other:") :])
    return ArtifactKind(label)


def verify_content(artifact_id: str, data: bytes) -> None:
    """Raise `artifact_content_address_mismatch` unless sha256(data) == artifact_id."""
    if artifact_id_of_bytes(data) != artifact_id:
        raise Corruption(
            "artifact_content_address_mismatch",
            f"artifact {artifact_id} does not hash to its id",
            details={"artifact_id": artifact_id},
        )


class ArtifactStore(ABC):
    """Create-only, content-addressed blob storage.

    A backend implements the raw seam — `put_raw` and `get_raw`, bytes in and out under an
    id, unverified — plus `exists` (and, when it can list, `ids_with_prefix`); everything
    else is built on that seam here, so every backend computes and verifies content
    addresses the same way. The raw methods are public (as httpx's `BaseTransport` is the
    one public seam of a client): a wrapper (`ArtifactStoreWrapper`: timing, caching)
    calls its inner store through them. Callers that want verified bytes use `put`/`get`.
    """

    url: str = ""

    def put(self, kind: KindLike, data: bytes) -> ArtifactId:
        """Store `data` (idempotent) and return its id; the kind never changes the id."""
        artifact_id = artifact_id_of_bytes(data)
        stored = self.put_raw(artifact_id, kind, data)
        if stored != artifact_id:
            raise Corruption(
                "artifact_put_id_mismatch",
                f"store returned id {stored} for bytes hashing to {artifact_id}",
            )
        return artifact_id

    def get(self, artifact_id: str) -> bytes:
        """The verified bytes of `artifact_id`; `NotFound` when absent."""
        aid = ArtifactId(artifact_id)
        data = self.get_raw(aid)
        verify_content(aid, data)
        return data

    def put_keyed(self, key: str, kind: KindLike, data: bytes) -> None:
        """Store a record under a key its writer derives from another artifact's id rather
        than from the record's own bytes (a snapshot link, docs/storage.md#snapshot-links).
        Create-only like `put`: a key that holds other bytes is refused with
        `artifact_content_address_mismatch` (the in-memory store keeps the first)."""
        self.put_raw(ArtifactId(key), kind, data)

    def get_keyed(self, key: str) -> bytes:
        """The bytes `put_keyed` stored (`NotFound` when absent). Not hash-verified: the
        caller verifies what it builds from them."""
        return self.get_raw(ArtifactId(key))

    def peek_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """What a fast tier in front of the durable store holds for `keys` (ids or keyed
        records), in one round trip; keys it lacks are absent from the answer. It never reads
        the durable store, so a miss only means "ask `get`". Not verified: the caller checks
        what it uses. A store with no such tier holds nothing (a wrapper asks its store)."""
        return {}

    @abstractmethod
    def exists(self, artifact_id: str) -> bool: ...

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[ArtifactId]:
        """Ids of stored artifacts starting with `prefix`, ascending, at most `limit`.

        Backends answer from a listing of the one shard (directory, key prefix) the
        prefix names; a store that cannot list says so."""
        raise StorageError(
            "id_prefix_unsupported",
            f"the artifact store {self.url or type(self).__name__} cannot look up id prefixes",
        )

    @abstractmethod
    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        """Create the object unless it exists; return the id the backend holds it under.
        Raw: the caller (`put`, `put_keyed`) computed the id; nothing is verified here."""

    @abstractmethod
    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        """The stored bytes, unverified, or raise `NotFound`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class ArtifactStoreWrapper(ArtifactStore):
    """A store in front of another (`inner`): by default every call goes to `inner`, so a
    wrapper overrides only what it adds to (timing, a cache) and reaches `inner` through
    its public raw seam."""

    def __init__(self, inner: ArtifactStore) -> None:
        self.inner = inner
        self.url = inner.url

    def exists(self, artifact_id: str) -> bool:
        return self.inner.exists(artifact_id)

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[ArtifactId]:
        return self.inner.ids_with_prefix(prefix, limit)

    def peek_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        return self.inner.peek_many(keys)

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        return self.inner.put_raw(artifact_id, kind, data)

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        return self.inner.get_raw(artifact_id)

    def close(self) -> None:
        self.inner.close()


def put_json(store: ArtifactStore, kind: KindLike, value: JsonValue, where: str) -> ArtifactId:
    """Canonicalize (secrets and floats checked first) and store a JSON artifact."""
    return store.put(kind, canonical_bytes(value, where))


def get_json(store: ArtifactStore, artifact_id: str, where: str = "artifact") -> JsonValue:
    """Read a JSON artifact: hash-verified, canonical, float-free and secret-free."""
    return parse_canonical(store.get(artifact_id), where)
