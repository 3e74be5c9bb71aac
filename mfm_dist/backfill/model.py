"""What a backfill is made of: its name, its plan (a content-addressed artifact), the
records of its journal, and the keys that tie each partition to exactly one run.

A backfill is a named, durable set of partitions of one op. Each partition's run is
submitted with an idempotency key derived from the backfill name, the op and the
partition (`idempotency_key`), so the run id is a pure function of those
(`partition_run_id`) and a re-issued backfill never starts a second run for a partition.
A new run for a partition that already had one uses a new key *generation* (`…:g1`,
`…:g2`), recorded in the backfill's journal.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.artifacts import ArtifactStore, OtherArtifactKind, get_json
from mfm_dist.canonical import JsonValue, canonical_bytes, canonical_bytes_unchecked, sha256_hex
from mfm_dist.config import RunConfig
from mfm_dist.errors import Corruption, InvalidInput
from mfm_dist.ids import ArtifactId
from mfm_dist.journal import JournalRecord, RecordCodec, journal_id
from mfm_dist.results import RunPhase
from mfm_dist.secrets import is_secret_string
from mfm_dist.submission import MAX_LABEL_VALUE, SubmitRequest, run_id_for_key

JOURNAL_NAMESPACE = "backfill"
PLAN_KIND = OtherArtifactKind(value="BackfillPlan")
LABEL_BACKFILL = "backfill"
LABEL_PARTITION = "partition"
MAX_PARTITIONS = 100_000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class BackfillError(InvalidInput):
    """A backfill request that cannot be planned or a transition that is not allowed."""


def check_name(name: str) -> str:
    """1–64 characters of A-Z a-z 0-9 _ . - (starting with a letter or digit), not
    secret-shaped: the name appears in labels, keys and the journal id."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BackfillError(
            "backfill_name_invalid",
            "a backfill name is 1–64 characters of A-Z a-z 0-9 _ . - starting with a letter "
            "or digit",
        )
    if is_secret_string(name):
        raise BackfillError("backfill_name_invalid", "the backfill name is secret-shaped")
    return name


def backfill_journal(name: str) -> str:
    return journal_id(JOURNAL_NAMESPACE, check_name(name))


def idempotency_key(name: str, op: str, partition: str, generation: int = 0) -> str:
    """The submission key of a partition's run: `backfill:<name>:<digest>[:g<n>]`, where the
    digest covers (name, op, partition) — bounded in length whatever the partition."""
    digest = sha256_hex(canonical_bytes_unchecked([name, op, partition]))[:32]
    key = f"backfill:{name}:{digest}"
    return key if generation == 0 else f"{key}:g{generation}"


def partition_run_id(name: str, op: str, partition: str, generation: int = 0) -> str:
    """The run of a partition at a key generation: the same id on every machine, forever."""
    return run_id_for_key(op, idempotency_key(name, op, partition, generation))


def partition_labels(name: str, partition: str) -> dict[str, str]:
    return {LABEL_BACKFILL: name, LABEL_PARTITION: partition}


def check_partition_value(value: str, where: str) -> str:
    """Partition values are label values: ≤ 200 printable characters, not secret-shaped."""
    if not isinstance(value, str) or not value or len(value) > MAX_LABEL_VALUE:
        raise BackfillError(
            "backfill_partition_invalid",
            f"{where}: a partition value is 1–{MAX_LABEL_VALUE} printable characters",
        )
    if not value.isprintable():
        raise BackfillError(
            "backfill_partition_invalid", f"{where}: a partition value must be printable"
        )
    if is_secret_string(value):
        raise BackfillError("secrets_detected", f"{where}: a partition value is secret-shaped")
    return value


class Reprocess(str, Enum):
    """What happens to a partition that already has a run (docs/backfills.md)."""

    MISSING = "missing"  # completed → skip, running → attach, failed → skip
    FAILED = "failed"  # failed (or cancelled) → a new run
    ALL = "all"  # completed, failed or cancelled → a new run


class Partition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    value: str
    input: JsonValue


class BackfillPlan(BaseModel):
    """What the backfill runs: stored as canonical JSON in the artifact store (its id is
    the plan id). How it runs (reprocess mode, max active, rate) is in the journal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    name: str
    op: str
    version: str | None = None
    op_version: str
    config: RunConfig
    field: str | None = None
    source: str
    partitions: list[Partition]

    def canonical(self) -> bytes:
        return canonical_bytes(self.model_dump(mode="json"), "backfill plan")

    def store(self, artifacts: ArtifactStore) -> ArtifactId:
        return artifacts.put(PLAN_KIND, self.canonical())

    @classmethod
    def load(cls, artifacts: ArtifactStore, plan_id: str) -> BackfillPlan:
        raw = get_json(artifacts, plan_id, "backfill plan")
        try:
            return cls.model_validate(raw)
        except ValueError:
            raise Corruption(
                "backfill_plan_invalid", f"the stored backfill plan {plan_id} does not decode"
            ) from None

    def run_id(self, index: int, generation: int) -> str:
        return partition_run_id(self.name, self.op, self.partitions[index].value, generation)

    def key(self, index: int, generation: int) -> str:
        return idempotency_key(self.name, self.op, self.partitions[index].value, generation)


def partition_request(plan: BackfillPlan, index: int, generation: int) -> SubmitRequest:
    """The submission of a partition's run (the same on every backend)."""
    part = plan.partitions[index]
    return SubmitRequest(
        op=plan.op,
        version=plan.version,
        input=part.input,
        config=plan.config,
        idempotency_key=plan.key(index, generation),
        labels=partition_labels(plan.name, part.value),
    )


class Rate(BaseModel):
    """At most `count` new runs per `period_ms` (a sliding window)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(ge=1)
    period_ms: int = Field(ge=1)

    def text(self) -> str:
        unit = {1000: "s", 60_000: "m", 3_600_000: "h"}.get(self.period_ms)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.period_ms}ms"


_RATE_RE = re.compile(r"^\s*(\d{1,9})\s*(?:/\s*(s|sec|m|min|h|hour))?\s*$")


def parse_rate(text: str) -> Rate:
    """`R/s`, `R/m`, `R/h` or a bare `R` (per second); R a positive integer."""
    match = _RATE_RE.match(text or "")
    if not match or int(match.group(1)) < 1:
        raise BackfillError(
            "backfill_rate_invalid", "--rate is R/s, R/m or R/h with R a positive integer"
        )
    unit = (match.group(2) or "s")[0]
    return Rate(count=int(match.group(1)), period_ms={"s": 1000, "m": 60_000, "h": 3_600_000}[unit])


# --- journal records -------------------------------------------------------------------------

Decision = Literal[
    "run",
    "skip_completed",
    "skip_failed",
    "skip_cancelled",
    "attach",
    "rerun_completed",
    "rerun_failed",
    "rerun_cancelled",
]
DECISIONS: tuple[Decision, ...] = get_args(Decision)
Backend = Literal["local", "cluster"]
SettledPhase = Literal["Completed", "Failed", "Cancelled"]


class Issued(JournalRecord):
    """A (re-)issue of the backfill: its plan, how it runs, and what it decided for every
    partition that already had a run. Partitions not named in `decisions` are `run`."""

    KIND = "issued"
    issue: int = Field(ge=1)
    plan_id: str
    op: str
    partitions: int = Field(ge=1)
    reprocess: Reprocess
    max_active: int = Field(ge=1)
    rate: Rate | None = None
    backend: Backend
    origin: Literal["create", "retry"] = "create"
    decisions: dict[str, list[int]] = Field(default_factory=dict)
    generations: list[tuple[int, int]] = Field(default_factory=list)
    """(index, generation) of every partition whose key generation is not 0."""


class Claimed(JournalRecord):
    """Partitions whose runs this backfill starts now (written before they are submitted:
    whoever drives the backfill next makes sure each one has its run)."""

    KIND = "claimed"
    issue: int
    entries: list[tuple[int, int]]  # (index, generation)


class SettledEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    phase: SettledPhase
    code: str | None = None


class Settled(JournalRecord):
    """Runs of claimed partitions seen terminal in the event log."""

    KIND = "settled"
    issue: int
    entries: list[SettledEntry]


class RejectedEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    code: str
    message: str


class Rejected(JournalRecord):
    """Partitions whose submission was refused for good (e.g. `op_config_invalid`): they
    have no run; `retry --failed` submits them again."""

    KIND = "rejected"
    issue: int
    entries: list[RejectedEntry]


class Paused(JournalRecord):
    KIND = "paused"
    by: str


class Resumed(JournalRecord):
    KIND = "resumed"
    by: str


class CancelRequested(JournalRecord):
    KIND = "cancel_requested"
    by: str
    reason: str | None = None


class Finished(JournalRecord):
    """The end of an issue: every planned partition's run is terminal (`completed`), or the
    backfill was cancelled and every run it had started is terminal (`cancelled`)."""

    KIND = "finished"
    issue: int
    outcome: Literal["completed", "cancelled"]
    counts: dict[str, int]


BackfillRecord = (
    Issued | Claimed | Settled | Rejected | Paused | Resumed | CancelRequested | Finished
)
CODEC: RecordCodec[BackfillRecord] = RecordCodec(
    Issued, Claimed, Settled, Rejected, Paused, Resumed, CancelRequested, Finished
)

TERMINAL_PHASES = {RunPhase.COMPLETED, RunPhase.FAILED, RunPhase.CANCELLED}
