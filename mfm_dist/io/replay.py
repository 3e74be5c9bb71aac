"""`ReplayIo`: the provider for `io_mode = Replay` (docs/io-and-replay.md).

It serves only what the run recorded and never constructs or touches a
transport, so replaying a run cannot reach the outside world. Time and
randomness are read back under the same derived keys, in the same order, so
a deterministic handler reproduces every snapshot id of the original.
"""

from __future__ import annotations

from mfm_dist.canonical import JsonValue, artifact_id_of_bytes
from mfm_dist.errors import MissingFact, MissingFactKey
from mfm_dist.ids import ArtifactId
from mfm_dist.io.base import AttemptScope, IoCall, IoProvider, IoResult
from mfm_dist.io.facts import (
    FactPayloadConflict,
    check_random_len,
    check_recorded_random,
    fact_bytes,
    lookup_json,
    read_json_fact,
    read_now_millis,
    read_raw_fact,
)


class ReplayIo(IoProvider):
    """Serves recorded, verified facts for one attempt; records nothing."""

    def __init__(self, scope: AttemptScope) -> None:
        self.scope = scope

    def _bound(self, key: str) -> ArtifactId:
        payload_id = self.scope.facts.lookup(key)
        if payload_id is None:
            raise MissingFact(key, retryable=self.scope.run_config.replay_missing_fact_retryable)
        return payload_id

    async def call(self, call: IoCall) -> IoResult:
        if call.fact_key is None:
            raise MissingFactKey()
        payload_id = self._bound(call.fact_key)
        value = read_json_fact(self.scope, payload_id)
        return IoResult(
            response=value, fact_key=call.fact_key, payload_id=payload_id, replayed=True
        )

    async def record_value(self, key: str, value: JsonValue) -> ArtifactId:
        payload_id = artifact_id_of_bytes(fact_bytes(value))
        recorded = self._bound(key)
        if recorded != payload_id:
            raise FactPayloadConflict(key, "was recorded with a different payload")
        return recorded

    async def get_recorded_fact(self, key: str) -> JsonValue | None:
        return lookup_json(self.scope, key)

    async def now_millis(self) -> int:
        return read_now_millis(self.scope, self._bound(self.scope.next_derived_key("now_millis")))

    async def random_bytes(self, n: int) -> bytes:
        check_random_len(n)
        key = self.scope.next_derived_key("random_bytes")
        return check_recorded_random(key, read_raw_fact(self.scope, self._bound(key)), n)

    async def sleep_ms(self, ms: int) -> None:
        """A no-op: replay does not wait for the outside world."""
