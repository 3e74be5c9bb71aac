"""Run configuration: `RunConfig` and its parts, in the reference's JSON shapes.

Specified in docs/plans.md#run-configuration.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, Tag, ValidationInfo, field_validator

from mfm_dist.tagged import NewtypeVariant, OptionalExtensions, TaggedModel, tag_discriminator


class Duration(BaseModel):
    """A duration as serde serializes Rust's `std::time::Duration`: `{"secs":S,"nanos":N}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secs: int = Field(strict=True, ge=0)
    nanos: int = Field(strict=True, default=0, ge=0, lt=1_000_000_000)

    @classmethod
    def from_millis(cls, millis: int) -> Duration:
        return cls(secs=millis // 1000, nanos=(millis % 1000) * 1_000_000)

    @property
    def total_millis(self) -> int:
        return self.secs * 1000 + self.nanos // 1_000_000

    @property
    def total_seconds(self) -> float:
        return self.secs + self.nanos / 1e9


class IoMode(str, Enum):
    LIVE = "Live"
    REPLAY = "Replay"


class FixedBackoff(TaggedModel):
    TAG_PATH = ("Fixed",)
    delay: Duration


class ExponentialBackoff(TaggedModel):
    TAG_PATH = ("Exponential",)
    base: Duration
    max: Duration


Backoff = Annotated[
    Annotated[FixedBackoff, Tag("Fixed")] | Annotated[ExponentialBackoff, Tag("Exponential")],
    tag_discriminator({"Fixed", "Exponential"}),
]


def backoff_delay(backoff: FixedBackoff | ExponentialBackoff, attempt: int) -> Duration:
    """`Fixed{delay}` → delay; `Exponential{base, max}` → min(base · 2^attempt, max)."""
    if isinstance(backoff, FixedBackoff):
        return backoff.delay
    base_ns = backoff.base.secs * 1_000_000_000 + backoff.base.nanos
    max_ns = backoff.max.secs * 1_000_000_000 + backoff.max.nanos
    nanos = min(base_ns * (2 ** min(attempt, 62)), max_ns)
    return Duration(secs=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


class RetryPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(strict=True, default=1, ge=0, le=2**32 - 1)
    backoff: Backoff = FixedBackoff(delay=Duration(secs=0))

    def allows_retry(self, attempt: int) -> bool:
        """`max_attempts` counts the first try; 0 or 1 means no retry."""
        return attempt + 1 < self.max_attempts


class EventProfileLevel(str, Enum):
    MINIMAL = "Minimal"
    NORMAL = "Normal"
    VERBOSE = "Verbose"


class CustomEventProfile(NewtypeVariant):
    TAG_PATH = ("Custom",)


EventProfile = Annotated[
    Annotated[EventProfileLevel, Tag("Minimal")]
    | Annotated[EventProfileLevel, Tag("Normal")]
    | Annotated[EventProfileLevel, Tag("Verbose")]
    | Annotated[CustomEventProfile, Tag("Custom")],
    tag_discriminator({"Minimal", "Normal", "Verbose", "Custom"}),
]


class FanOutJoin(TaggedModel):
    TAG_PATH = ("FanOutJoin",)
    max_concurrency: int = Field(strict=True, ge=1, le=1_000_000)


ExecutionMode = Annotated[
    Annotated[Literal["Sequential"], Tag("Sequential")] | Annotated[FanOutJoin, Tag("FanOutJoin")],
    tag_discriminator({"Sequential", "FanOutJoin"}),
]


class CustomCheckpointing(NewtypeVariant):
    TAG_PATH = ("Custom",)


ContextCheckpointing = Annotated[
    Annotated[Literal["AfterEveryState"], Tag("AfterEveryState")]
    | Annotated[CustomCheckpointing, Tag("Custom")],
    tag_discriminator({"AfterEveryState", "Custom"}),
]


def positive_duration(value: Duration | None, what: str) -> Duration | None:
    if value is not None and value.total_millis < 1:
        raise ValueError(f"{what} must be at least 1 ms")
    return value


class RunConfig(OptionalExtensions):
    """How a run executes. Part of the manifest, so it is hashed into the manifest id.

    `state_timeout` (the timeout of states that declare none) and `run_timeout` (the run's
    overall deadline, counted from `RunStarted`; past it the run is cancelled with reason
    `run_deadline_exceeded`) extend the reference shape; they are left out of the JSON while
    unset, so existing manifest ids hold (docs/deadlines.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("state_timeout", "run_timeout")

    io_mode: IoMode = IoMode.LIVE
    retry_policy: RetryPolicy = RetryPolicy()
    event_profile: EventProfile = EventProfileLevel.NORMAL
    execution_mode: ExecutionMode = "Sequential"
    context_checkpointing: ContextCheckpointing = "AfterEveryState"
    replay_missing_fact_retryable: bool = False
    skip_tags: list[str] = Field(default_factory=list)
    nix_flake_allowlist: list[str] = Field(default_factory=list)
    state_timeout: Duration | None = None
    run_timeout: Duration | None = None

    @field_validator("state_timeout", "run_timeout")
    @classmethod
    def _positive(cls, value: Duration | None, info: ValidationInfo) -> Duration | None:
        return positive_duration(value, str(info.field_name))

    @property
    def max_concurrency(self) -> int:
        """1 in sequential mode; the configured bound in fan-out mode."""
        mode = self.execution_mode
        return mode.max_concurrency if isinstance(mode, FanOutJoin) else 1

    @property
    def run_timeout_ms(self) -> int | None:
        return None if self.run_timeout is None else self.run_timeout.total_millis

    @property
    def is_fan_out(self) -> bool:
        return isinstance(self.execution_mode, FanOutJoin)

    def keeps_domain_event(self, name: str) -> bool:
        """`Minimal` keeps only `fact_recorded`; every other profile keeps all."""
        if self.event_profile == EventProfileLevel.MINIMAL:
            return name == "fact_recorded"
        return True
