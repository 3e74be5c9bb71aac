"""The IO seam (docs/io-and-replay.md): what handlers may use instead of ambient IO.

One `IoProvider` is built per attempt by an `IoFactory` from an `AttemptScope`,
which is all a provider needs: the run and attempt identity, the run config,
the artifact store for fact payloads, the run's fact index, and a durable
`bind_fact` that appends the `fact_recorded` binding at once. The embedded
engine and the distributed worker build scopes the same way, so IO behaves
identically on both.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.errors import Corruption, IoError
from mfm_dist.events import FACT_RECORDED, DomainEvent
from mfm_dist.ids import ArtifactId, RunId, StateId


class IoCall(BaseModel):
    """A request to a transport, routed by `namespace`. With a `fact_key` it is recorded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str
    request: JsonValue = None
    fact_key: str | None = None


class IoResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    response: JsonValue = None
    fact_key: str | None = None
    payload_id: ArtifactId | None = None
    replayed: bool = Field(default=False, description="served from a recorded fact")


class FactRecordedPayload(BaseModel):
    """The payload of a `fact_recorded` domain event: `{key, payload_id, meta}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    payload_id: ArtifactId
    meta: dict[str, JsonValue] = Field(default_factory=dict)


def fact_recorded_event(key: str, payload_id: ArtifactId) -> DomainEvent:
    payload = FactRecordedPayload(key=key, payload_id=payload_id).model_dump(mode="json")
    return DomainEvent(name=FACT_RECORDED, payload=payload)


class FactIndex:
    """Single-assignment fact bindings of one run: key → payload id. Thread-safe.

    `fallback` looks a key up in the run's durable store when it is not known
    locally — distributed workers see bindings other workers made.
    """

    def __init__(
        self,
        bindings: dict[str, ArtifactId] | None = None,
        fallback: Callable[[str], ArtifactId | None] | None = None,
    ) -> None:
        self._bindings: dict[str, ArtifactId] = dict(bindings or {})
        self._fallback = fallback
        self.lock = threading.RLock()

    def lookup(self, key: str) -> ArtifactId | None:
        with self.lock:
            found = self._bindings.get(key)
            if found is None and self._fallback is not None:
                found = self._fallback(key)
                if found is not None:
                    self._bindings[key] = found
            return found

    def add(self, key: str, payload_id: ArtifactId) -> None:
        """Record a durable binding; a different payload under a bound key is corruption."""
        with self.lock:
            existing = self._bindings.get(key)
            if existing is not None and existing != payload_id:
                raise Corruption("fact_recorded_conflict", "a fact key is bound to two payloads")
            self._bindings[key] = payload_id

    def __len__(self) -> int:
        with self.lock:
            return len(self._bindings)

    def items(self) -> list[tuple[str, ArtifactId]]:
        with self.lock:
            return list(self._bindings.items())


BindFact = Callable[[str, ArtifactId], None]
"""Durably append `fact_recorded{key, payload_id}` for the attempt, then index it."""


@dataclass
class AttemptScope:
    """Everything an IO provider may touch during one attempt."""

    run_id: RunId
    state_id: StateId
    attempt: int
    run_config: RunConfig
    artifacts: ArtifactStore
    facts: FactIndex
    bind_fact: BindFact
    derived_ordinal: int = field(default=0)
    fence: Callable[[], None] | None = None
    """Raises if this attempt may no longer act (e.g. its distributed lease was lost).
    Checked before every transport call and fact binding, so a superseded worker stops
    before repeating an external effect. A lease narrows that window; it cannot close it
    entirely (a process can pause right after the check), which is why side effects also
    pass their idempotency key to the receiver."""

    def check_fence(self) -> None:
        if self.fence is not None:
            self.fence()

    def next_derived_key(self, kind: str) -> str:
        """`mfm:{kind}|run:{run_id}|state:{state_id}|attempt:{n}|ord:{k}`, k counted per attempt."""
        key = (
            f"mfm:{kind}|run:{self.run_id}|state:{self.state_id}"
            f"|attempt:{self.attempt}|ord:{self.derived_ordinal}"
        )
        self.derived_ordinal += 1
        return key


class IoProvider(ABC):
    """The only door to the outside world for a handler."""

    @abstractmethod
    async def call(self, call: IoCall) -> IoResult:
        """Call a transport; with a fact key, record the response (or serve the record)."""

    @abstractmethod
    async def record_value(self, key: str, value: JsonValue) -> ArtifactId:
        """Bind `key` to a canonical value (e.g. proof that a side effect happened)."""

    @abstractmethod
    async def get_recorded_fact(self, key: str) -> JsonValue | None:
        """The verified recorded payload of `key`, or None when unbound."""

    @abstractmethod
    async def now_millis(self) -> int:
        """Wall-clock time as a fact."""

    @abstractmethod
    async def random_bytes(self, n: int) -> bytes:
        """Randomness as a fact (stored raw)."""

    @abstractmethod
    async def sleep_ms(self, ms: int) -> None:
        """Sleep (a no-op in replay)."""


IoFactory = Callable[[AttemptScope], IoProvider]


class IoUnavailable(IoError):
    def __init__(self, what: str) -> None:
        super().__init__("io_unavailable", f"{what} is not available to this attempt")
