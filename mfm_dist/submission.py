"""The submission contract, version 1 (docs/submission.md): what another system sends to start
a run, what it gets back, and how a submission maps to exactly one run.

Backend-neutral: the Celery task (`workers/submit.py`) and the CLI both use it. The shapes
are pydantic models, so the shipped JSON Schema (`mfm schema submit`) is generated from the
same code that validates the messages.

Idempotency: with an `idempotency_key` the run id is a pure function of `(op, key)`
(UUID v5), so every submission of that pair — after any dedup window, from any worker,
racing or not — names the same run; the run's `run_submitted` event keeps a fingerprint of
`(op, version, input, config)`, and a later submission with another fingerprint is refused
with `idempotency_conflict`. Without a key, a delivery id (the Celery task id) plays the
same role, so a redelivered message never starts a second run.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mfm_dist.canonical import JsonValue, canonical_bytes_unchecked, check_json, sha256_hex
from mfm_dist.config import RunConfig
from mfm_dist.errors import ErrorCategory, ErrorInfo, InvalidInput, MfmError
from mfm_dist.events import DomainEvent
from mfm_dist.results import RunResult
from mfm_dist.secrets import is_secret_string

SUBMIT_VERSION = 1
RUN_SUBMITTED_EVENT = "run_submitted"
"""Run-level domain event appended in the same batch as `RunStarted` (seq 2): the
submission's fingerprint, idempotency key, labels and completion callback. Always kept,
whatever the event profile (listing, filtering and callbacks read it)."""

RUN_ID_NAMESPACE = uuid.UUID("6f1d0c53-2a0e-5d54-9a7e-6d66d2b8e1a7")
"""Namespace of the UUID v5 run ids derived from `(op, key)` — fixed forever."""

MAX_LABELS = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_LABEL_KEY_RE = re.compile(r"^[a-z0-9]([a-z0-9_.\-/]{0,62})$")
MAX_LABEL_VALUE = 200
MAX_KEY_LENGTH = 200


class SubmissionRejected(InvalidInput):
    """A submission that cannot start a run; never echoes a value of the payload."""


def _plain_text(value: str, what: str, limit: int) -> str:
    if not value or len(value) > limit or not value.isprintable():
        raise ValueError(f"{what} must be 1–{limit} printable characters")
    if is_secret_string(value):
        raise ValueError(f"{what} is secret-shaped")
    return value


class OnComplete(BaseModel):
    """Send `task(result)` to `queue` once the run has finished (docs/submission.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field(description="Celery task name the result is sent to.")
    queue: str = Field(description="Queue the callback message is published to.")

    @field_validator("task", "queue")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be 1–200 characters of A-Z a-z 0-9 _ . : -")
        return value


Labels = Annotated[
    dict[str, str],
    Field(description="string → string; kept with the run for listing and filtering."),
]


class SubmitRequest(BaseModel):
    """One submission (message version 1). Unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = Field(default=1, description="Message version of this contract.")
    op: str = Field(description="Operation (or registered pipeline) to run.")
    version: str | None = Field(default=None, description="Operation version; newest if unset.")
    input: JsonValue = Field(default_factory=dict, description="The run's input (JSON).")
    config: RunConfig = Field(default_factory=RunConfig, description="The run configuration.")
    idempotency_key: str | None = Field(
        default=None,
        description="Same (op, key) ⇒ same run, forever; another payload ⇒ idempotency_conflict.",
    )
    labels: Labels = Field(default_factory=dict)
    on_complete: OnComplete | None = None

    @field_validator("op")
    @classmethod
    def _op(cls, value: str) -> str:
        return _plain_text(value, "op", 200)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        return None if value is None else _plain_text(value, "version", 100)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else _plain_text(value, "idempotency_key", MAX_KEY_LENGTH)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return check_labels(value)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Label rules: ≤ 32 labels; keys `[a-z0-9][a-z0-9_.-/]{0,62}`; values ≤ 200 printable
    characters; nothing secret-shaped."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, val in labels.items():
        if not _LABEL_KEY_RE.match(key) or is_secret_string(key):
            raise ValueError("label keys are 1–63 characters of a-z 0-9 _ . - / (not secret)")
        if not isinstance(val, str) or len(val) > MAX_LABEL_VALUE or not val.isprintable():
            raise ValueError(f"label values are at most {MAX_LABEL_VALUE} printable characters")
        if is_secret_string(val):
            raise ValueError("a label value is secret-shaped")
    return dict(sorted(labels.items()))


class SubmissionRecord(BaseModel):
    """The payload of `run_submitted`: what the run's log keeps of its submission."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fingerprint: str
    idempotency_key: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    on_complete: OnComplete | None = None
    submitted_ms: int

    def event(self) -> DomainEvent:
        return DomainEvent(name=RUN_SUBMITTED_EVENT, payload=self.model_dump(mode="json"))

    def same_request(self, other: SubmissionRecord) -> bool:
        """Whether `other` asks for what this record did: the same op, version, input and
        config (the fingerprint), key, labels and completion callback. Only the time may
        differ: labels or a callback that differ are another request, not a repeat."""
        return (
            self.fingerprint == other.fingerprint
            and self.idempotency_key == other.idempotency_key
            and self.labels == other.labels
            and self.on_complete == other.on_complete
        )


Outcome = Literal["created", "existing"]


class SubmitReply(BaseModel):
    """The task's result: JSON the caller parses, never an exception it must import."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str | None = None
    outcome: Outcome | None = None
    error: ErrorInfo | None = None

    @classmethod
    def ok(cls, run_id: str, outcome: Outcome) -> SubmitReply:
        return cls(run_id=run_id, outcome=outcome)

    @classmethod
    def failed(cls, error: ErrorInfo) -> SubmitReply:
        safe = error.redacted()
        return cls(error=safe)

    def to_json(self) -> dict[str, Any]:
        """`{"run_id", "outcome"}` or `{"error": {code, category, retryable, message}}`."""
        if self.error is not None:
            return {"error": self.error.model_dump(mode="json", exclude={"details"})}
        return {"run_id": self.run_id, "outcome": self.outcome}


def parse_request(payload: Any) -> SubmitRequest:
    """Validate a decoded message body; every failure is a `SubmissionRejected` whose code
    says what is wrong and whose message names fields, never values."""
    if not isinstance(payload, dict):
        raise SubmissionRejected("submission_invalid", "a submission is a JSON object")
    unknown = sorted(set(payload) - set(SubmitRequest.model_fields))
    if unknown:
        named = ", ".join(k if _NAME_RE.match(str(k)) else "?" for k in unknown[:5])
        raise SubmissionRejected("submission_unknown_field", f"unknown field(s): {named}")
    if payload.get("v", 1) != SUBMIT_VERSION:
        raise SubmissionRejected(
            "submission_version_unsupported",
            f"this worker speaks submission version {SUBMIT_VERSION}",
        )
    _check_values(payload)
    try:
        return SubmitRequest.model_validate(payload)
    except ValidationError as exc:
        raise SubmissionRejected("submission_invalid", _describe(exc)) from None


def _check_values(payload: dict[str, Any]) -> None:
    """Secrets and non-canonical JSON first, with their own codes (the input and labels
    are checked like anything else the project would store)."""
    for field in ("input", "labels", "idempotency_key", "op", "version"):
        if field in payload:
            try:
                check_json(payload[field], field)
            except MfmError as exc:
                raise SubmissionRejected(exc.info.code, exc.info.message) from None


def _describe(exc: ValidationError) -> str:
    """Field paths and what was expected — pydantic's own text may quote the input."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "submission"
        reason = err["msg"] if err["type"] == "value_error" else err["type"].replace("_", " ")
        parts.append(f"{where}: {reason.removeprefix('Value error, ')}")
    return "; ".join(parts)


def fingerprint(op_id: str, op_version: str, run_input: JsonValue, config: RunConfig) -> str:
    """SHA-256 of the canonical `(op, version, input, config)`: what makes two submissions
    of one idempotency key the same request."""
    shape = {
        "op": op_id,
        "version": op_version,
        "input": run_input,
        "config": config.model_dump(mode="json"),
    }
    return sha256_hex(canonical_bytes_unchecked(shape))


def run_id_for_key(op: str, idempotency_key: str) -> str:
    """The run of `(op, key)`: the same id on every worker, forever."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"key\x00{op}\x00{idempotency_key}"))


def run_id_for_delivery(delivery_id: str) -> str:
    """The run of a keyless message: one run per delivered message id."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"delivery\x00{delivery_id}"))


def conflict() -> SubmissionRejected:
    return SubmissionRejected(
        "idempotency_conflict",
        "this idempotency key already names a run submitted with a different op version, "
        "input or config",
    )


def rejection_info(exc: BaseException) -> ErrorInfo:
    """The reply's error for any failure of an acceptance (unexpected ones included)."""
    if isinstance(exc, MfmError):
        return exc.info
    return ErrorInfo(
        code="submission_failed",
        category=ErrorCategory.UNKNOWN,
        retryable=True,
        message=f"the submission could not be accepted ({type(exc).__name__})",
    )


def completion_message(result: RunResult, record: SubmissionRecord) -> dict[str, Any]:
    """The one argument of an `on_complete` callback: the run's outcome and its labels."""
    error = result.error.model_dump(mode="json", exclude={"details"}) if result.error else None
    return {
        "run_id": str(result.run_id),
        "phase": result.phase.value,
        "final_snapshot_id": str(result.final_snapshot_id) if result.final_snapshot_id else None,
        "failed_state": str(result.failed_state) if result.failed_state else None,
        "error": error,
        "labels": dict(record.labels),
        "idempotency_key": record.idempotency_key,
    }


def completion_task_id(run_id: str) -> str:
    """The Celery task id of a run's callback: stable, so a receiver can drop a repeat."""
    return f"mfm-complete-{run_id}"


def submit_schema() -> dict[str, Any]:
    """The JSON Schema of a version-1 submission (what `mfm schema submit` prints)."""
    schema = SubmitRequest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://mfm-dist.dev/schemas/submit-v1.json"
    schema["title"] = "mfm.submit message, version 1"
    return schema
