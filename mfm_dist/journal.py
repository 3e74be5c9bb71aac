"""Journals: small, typed, append-only logs kept in the event store next to the runs.

A journal is what a long-lived job that is *not* a run (a backfill) records about itself:
its decisions and its progress. It lives in the same event store as the runs it drives,
so it is exactly as durable as they are, and one store URL shows both.

Every backend implements the same four calls (`EventStore.journal_head`,
`journal_append`, `journal_read`, `list_journals`) with the same guards as run streams:

* entries are 1-indexed and contiguous, never changed or removed;
* `journal_append(journal, expected_seq, drafts)` appends the whole batch iff the head
  equals `expected_seq` (else `expected_seq_mismatch`, nothing written) — so two writers
  that read the same head cannot both act on it;
* ids are `<namespace>/<name>` (`invalid_journal_id`), record kinds are error-code-like
  segments, bodies are canonical JSON with nothing secret-shaped (checked before
  anything is written).

On top of the untyped entries, `RecordCodec` maps each kind to a pydantic model, so
callers append and read typed records and a body that does not decode is `Corruption`
(`journal_record_invalid`), never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mfm_dist.canonical import JsonValue, canonical_bytes_unchecked, check_json
from mfm_dist.errors import Corruption, InvalidInput

_JOURNAL_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}/[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def check_journal_id(journal: str) -> str:
    """`<namespace>/<name>`: namespace `[a-z][a-z0-9_]{0,31}`, name
    `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`."""
    if not isinstance(journal, str) or not _JOURNAL_ID_RE.match(journal):
        raise InvalidInput(
            "invalid_journal_id",
            "a journal id is <namespace>/<name> (namespace a-z 0-9 _, name A-Z a-z 0-9 _ . : -)",
        )
    return journal


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise InvalidInput("invalid_journal_id", "a journal namespace is [a-z][a-z0-9_]{0,31}")
    return namespace


def journal_id(namespace: str, name: str) -> str:
    return check_journal_id(f"{namespace}/{name}")


class JournalDraft(BaseModel):
    """A record before the store assigns its sequence number."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    body: JsonValue = None
    ts_millis: int = Field(ge=0)

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if not _KIND_RE.match(value):
            raise ValueError("a record kind is [a-z][a-z0-9_]{0,62}")
        return value

    @field_validator("body")
    @classmethod
    def _body(cls, value: JsonValue) -> JsonValue:
        check_json(value, "journal record")  # secrets, floats, ranges: raised as MfmError
        return value

    def at(self, journal: str, seq: int) -> JournalEntry:
        return JournalEntry(
            journal=journal, seq=seq, ts_millis=self.ts_millis, kind=self.kind, body=self.body
        )

    def stored_bytes(self) -> bytes:
        """The persisted form of the record without its position (`journal`, `seq`)."""
        return canonical_bytes_unchecked(
            {"kind": self.kind, "ts_millis": self.ts_millis, "body": self.body}
        )


class JournalEntry(BaseModel):
    """One persisted journal record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    journal: str
    seq: int = Field(ge=1)
    ts_millis: int = Field(ge=0)
    kind: str
    body: JsonValue = None

    def stored_bytes(self) -> bytes:
        return canonical_bytes_unchecked(
            {"kind": self.kind, "ts_millis": self.ts_millis, "body": self.body}
        )

    @classmethod
    def from_stored(cls, journal: str, seq: int, data: bytes | str) -> JournalEntry:
        """Decode the persisted form; anything else is `Corruption`."""
        try:
            raw = orjson.loads(data)
            return cls(
                journal=journal,
                seq=seq,
                ts_millis=raw["ts_millis"],
                kind=raw["kind"],
                body=raw.get("body"),
            )
        except (ValueError, TypeError, KeyError, ValidationError):
            raise Corruption(
                "journal_record_invalid",
                f"stored record {seq} of journal {journal} cannot be decoded",
                details={"journal": journal, "seq": seq},
            ) from None


class JournalSummary(BaseModel):
    """One journal in a listing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    journal: str
    head_seq: int
    created_ms: int
    updated_ms: int

    @property
    def name(self) -> str:
        return self.journal.split("/", 1)[1]


def check_drafts(journal: str, drafts: Iterable[JournalDraft]) -> list[JournalDraft]:
    """What every backend checks before it writes: a valid id and valid drafts."""
    check_journal_id(journal)
    out = list(drafts)
    for draft in out:
        if not isinstance(draft, JournalDraft):
            raise InvalidInput("journal_record_invalid", "journal records must be JournalDrafts")
    return out


# --- typed records ------------------------------------------------------------------------------


class JournalRecord(BaseModel):
    """Base of typed journal records: `KIND` names the record in the journal."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    KIND: ClassVar[str] = ""


R = TypeVar("R", bound=JournalRecord)


class RecordCodec(Generic[R]):
    """Typed records ↔ journal drafts/entries, for one family of record models."""

    def __init__(self, *models: type[R]) -> None:
        self._models: dict[str, type[R]] = {}
        for model in models:
            if not _KIND_RE.match(model.KIND) or model.KIND in self._models:
                raise ValueError(f"record kind {model.KIND!r} is invalid or registered twice")
            self._models[model.KIND] = model

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._models)

    def draft(self, record: R, ts_millis: int) -> JournalDraft:
        if type(record).KIND not in self._models:
            raise InvalidInput("journal_record_invalid", f"unknown record {type(record).__name__}")
        return JournalDraft(
            kind=type(record).KIND, body=record.model_dump(mode="json"), ts_millis=ts_millis
        )

    def decode(self, entry: JournalEntry) -> R:
        model = self._models.get(entry.kind)
        if model is None:
            raise Corruption(
                "journal_record_invalid",
                f"record {entry.seq} of journal {entry.journal} has an unknown kind",
                details={"journal": entry.journal, "seq": entry.seq, "kind": entry.kind},
            )
        try:
            return model.model_validate(entry.body)
        except ValidationError:
            raise Corruption(
                "journal_record_invalid",
                f"record {entry.seq} ({entry.kind}) of journal {entry.journal} does not decode",
                details={"journal": entry.journal, "seq": entry.seq, "kind": entry.kind},
            ) from None

    def decode_all(self, entries: Sequence[JournalEntry]) -> list[tuple[JournalEntry, R]]:
        return [(entry, self.decode(entry)) for entry in entries]


def describe(entry: JournalEntry) -> dict[str, Any]:
    """A JSON form for output (`--json` listings)."""
    return entry.model_dump(mode="json")
