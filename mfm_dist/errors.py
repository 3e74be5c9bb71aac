"""Structured errors (docs/errors.md).

Every error carries an `ErrorInfo` whose `code` is stable API (see the README's
error-code list). Exceptions are for invalid input and infrastructure faults; a
failed *run* is a `RunResult`, never an exception.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from mfm_dist.secrets import contains_secret, is_secret_string, must_redact, shown

REDACTED_MESSAGE = "error details redacted"
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class ErrorCategory(str, Enum):
    PARSING_INPUT = "ParsingInput"
    ON_CHAIN = "OnChain"
    OFF_CHAIN = "OffChain"
    RPC = "Rpc"
    STORAGE = "Storage"
    CONTEXT = "Context"
    UNKNOWN = "Unknown"


class ErrorInfo(BaseModel):
    """The persisted, serializable description of an error."""

    model_config = ConfigDict(frozen=True, use_enum_values=False)

    code: str
    category: ErrorCategory
    retryable: bool = False
    message: str
    details: Any = None

    def redacted(self) -> ErrorInfo:
        """The form that may be persisted: no details, no secret-looking message, and a
        code that is a valid error-code segment (else `handler_error_code_invalid`)."""
        message = REDACTED_MESSAGE if must_redact(self.message) else self.message
        code = self.code
        if is_secret_string(code):
            code = "redacted_error"
        elif not _CODE_RE.match(code):
            code = "handler_error_code_invalid"
        return ErrorInfo(
            code=code, category=self.category, retryable=self.retryable, message=message
        )

    def safe_details(self) -> Any:
        """Details with secret-shaped content dropped, for user-facing output."""
        if self.details is None or contains_secret(self.details):
            return None
        return self.details


class MfmError(Exception):
    """Base of every mfm-dist exception: carries an `ErrorInfo`."""

    family: ClassVar[str] = "Other"
    variant: ClassVar[str] = "Other"
    default_category: ClassVar[ErrorCategory] = ErrorCategory.UNKNOWN

    def __init__(
        self,
        code: str,
        message: str,
        *,
        category: ErrorCategory | None = None,
        retryable: bool = False,
        details: Any = None,
    ) -> None:
        self.info = ErrorInfo(
            code=code,
            category=category or self.default_category,
            retryable=retryable,
            message=message,
            details=details,
        )
        super().__init__(f"{code}: {message}")

    @classmethod
    def from_info(cls, info: ErrorInfo) -> MfmError:
        err = cls.__new__(cls)
        err.info = info
        Exception.__init__(err, f"{info.code}: {info.message}")
        return err

    @property
    def code(self) -> str:
        return self.info.code

    @property
    def retryable(self) -> bool:
        return self.info.retryable

    def to_shape(self) -> dict[str, Any]:
        """The reference's externally tagged shape, e.g. `{"Storage":{"NotFound":{…}}}`."""
        payload = self.info.model_dump(mode="json")
        return {self.family: {self.variant: payload}}


# --- invalid input ---------------------------------------------------------------------------


class InvalidInput(MfmError):
    """Input that fails validation (ids, JSON, configuration)."""

    family = "Other"
    variant = "InvalidInput"
    default_category = ErrorCategory.PARSING_INPUT


class InvalidId(InvalidInput, ValueError):
    """An identifier that does not match its grammar (`invalid <kind>: <value>`)."""

    def __init__(self, kind: str, value: object) -> None:
        shown_value = shown(value) if isinstance(value, str) else value
        super().__init__(f"invalid_{kind.replace(' ', '_')}", f"invalid {kind}: {shown_value}")


class SecretsDetected(InvalidInput):
    def __init__(self, where: str) -> None:
        super().__init__("secrets_detected", f"secret-shaped content rejected in {where}")


class CanonicalJsonError(InvalidInput):
    """JSON that cannot be canonicalized (floats, huge integers, non-JSON types)."""


# --- run-level -------------------------------------------------------------------------------


class RunError(MfmError):
    family = "Run"
    variant = "Other"


class InvalidPlan(RunError):
    variant = "InvalidPlan"
    default_category = ErrorCategory.PARSING_INPUT

    def __init__(self, reason: str, details: Any = None, *, code: str = "invalid_plan") -> None:
        super().__init__(code, f"invalid plan: {reason}", details=details)


# --- storage ---------------------------------------------------------------------------------


class StorageError(MfmError):
    family = "Storage"
    variant = "Other"
    default_category = ErrorCategory.STORAGE


class ConcurrencyError(StorageError):
    variant = "Concurrency"

    def __init__(self, message: str, *, code: str = "storage_concurrency", details: Any = None):
        super().__init__(code, message, details=details)


class NotFound(StorageError):
    variant = "NotFound"

    def __init__(self, message: str, *, code: str = "not_found", details: Any = None) -> None:
        super().__init__(code, message, details=details)


class Corruption(StorageError):
    variant = "Corruption"

    def __init__(self, code: str, message: str, *, details: Any = None) -> None:
        super().__init__(code, message, details=details)


class StorageUnavailable(StorageError):
    """A backend that stayed unreachable after bounded retries (retryable)."""

    variant = "Other"

    def __init__(self, message: str, *, code: str = "storage_unavailable") -> None:
        super().__init__(code, message, retryable=True)


# --- context ---------------------------------------------------------------------------------


class ContextError(MfmError):
    family = "Context"
    variant = "Other"
    default_category = ErrorCategory.CONTEXT


class MissingKey(ContextError):
    variant = "MissingKey"

    def __init__(self, key: str) -> None:
        super().__init__("context_missing_key", f"context key not found: {shown(key)}")


class ContextSerialization(ContextError):
    variant = "Serialization"


# --- io --------------------------------------------------------------------------------------


class IoError(MfmError):
    family = "Io"
    variant = "Other"
    default_category = ErrorCategory.RPC


class MissingFactKey(IoError):
    variant = "MissingFactKey"

    def __init__(self, message: str = "replay requires a fact key for this call") -> None:
        super().__init__("missing_fact_key", message)


class MissingFact(IoError):
    variant = "MissingFact"

    def __init__(self, key: str, *, retryable: bool = False) -> None:
        shown_key = shown(key)
        super().__init__(
            "missing_fact",
            f"no recorded fact for key {shown_key}",
            retryable=retryable,
            details={"key": shown_key},
        )
        self.key = key


class TransportError(IoError):
    variant = "Transport"


class RateLimited(IoError):
    variant = "RateLimited"


# --- state -----------------------------------------------------------------------------------


class StateError(MfmError):
    """Raised by handlers to fail a state with a chosen code and retryability."""

    family = "State"
    variant = "State"


def error_info_from_exception(exc: BaseException) -> ErrorInfo:
    """The `ErrorInfo` of any exception; foreign exceptions become `handler_exception`."""
    if isinstance(exc, MfmError):
        return exc.info
    text = str(exc)
    message = REDACTED_MESSAGE if must_redact(text) else f"{type(exc).__name__}: {text}"
    return ErrorInfo(
        code="handler_exception",
        category=ErrorCategory.UNKNOWN,
        retryable=False,
        message=message,
    )
