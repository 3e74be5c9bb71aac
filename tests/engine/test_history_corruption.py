"""Resume checks the whole history before appending anything (docs/execution.md#resume)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mfm_dist import FnState, RunConfig
from mfm_dist.errors import MfmError
from mfm_dist.events import (
    DomainEvent,
    EventEnvelope,
    StateCompleted,
    StateEntered,
)
from mfm_dist.ids import RunId
from mfm_dist.stores import InMemoryEventStore
from support.engine_helpers import GraphOp, Harness, registry_with


class RawEventStore(InMemoryEventStore):
    """Lets a test rewrite a run's stored stream, as a corrupted backend would present it."""

    def rewrite(self, run_id: str, envelopes: list[EventEnvelope]) -> None:
        with self._lock:
            self._runs[str(run_id)].events = list(envelopes)


def crashed_run() -> tuple[Harness, RunId, list[EventEnvelope]]:
    """A three-state chain stopped after its first state (history: RS, SE, SC)."""

    def sets(name: str) -> FnState:
        return FnState(lambda c, i, r: c.set(name, 1))

    op = GraphOp(
        "chain",
        {n: sets(n) for n in ("a", "b", "c")},
        [("a", "b"), ("b", "c")],
    )
    h = Harness(registry_with(op), events=RawEventStore())
    result = h.run("chain", {}, RunConfig())
    envs = h.events.read_range(result.run_id)
    return h, result.run_id, envs[:3]


def with_seq(env: EventEnvelope, seq: int) -> EventEnvelope:
    return env.model_copy(update={"seq": seq})


Mutation = Callable[[list[EventEnvelope], Harness], list[EventEnvelope]]


def _gap(envs: list[EventEnvelope], h: Harness) -> list[EventEnvelope]:
    return [envs[0], envs[1], with_seq(envs[2], 4)]


def _terminal_without_entered(envs: list[EventEnvelope], h: Harness) -> list[EventEnvelope]:
    done = envs[2]
    other = done.model_copy(
        update={
            "seq": 2,
            "event": StateCompleted(
                state_id="chain.main.b",
                context_snapshot_id=done.event.context_snapshot_id,  # type: ignore[union-attr]
            ),
            "state_id": "chain.main.b",
        }
    )
    return [envs[0], other]


def _double_entered(envs: list[EventEnvelope], h: Harness) -> list[EventEnvelope]:
    return [envs[0], envs[1], with_seq(envs[1], 3)]


def _fact_conflict(envs: list[EventEnvelope], h: Harness) -> list[EventEnvelope]:
    def fact(seq: int, payload_id: str) -> EventEnvelope:
        return envs[0].model_copy(
            update={
                "seq": seq,
                "event": DomainEvent(
                    name="fact_recorded", payload={"key": "k", "payload_id": payload_id, "meta": {}}
                ),
            }
        )

    return [*envs, fact(4, "a" * 64), fact(5, "b" * 64)]


def _fact_malformed(envs: list[EventEnvelope], h: Harness) -> list[EventEnvelope]:
    bad = envs[0].model_copy(
        update={"seq": 4, "event": DomainEvent(name="fact_recorded", payload={"key": 1})}
    )
    return [*envs, bad]


def _state_not_in_plan(envs: list[EventEnvelope], h: Harness) -> list[EventEnvelope]:
    entered = envs[1]
    alien = entered.model_copy(
        update={
            "seq": 4,
            "event": StateEntered(
                state_id="chain.main.zzz",
                attempt=0,
                base_snapshot_id=entered.event.base_snapshot_id,  # type: ignore[union-attr]
            ),
            "state_id": "chain.main.zzz",
        }
    )
    return [*envs, alien]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (_gap, "invalid_attempt_envelopes"),
        (_terminal_without_entered, "invalid_attempt_envelopes"),
        (_double_entered, "invalid_attempt_envelopes"),
        (_fact_conflict, "fact_recorded_conflict"),
        (_fact_malformed, "fact_recorded_malformed"),
        (_state_not_in_plan, "recovery_state_not_in_plan"),
    ],
)
def test_corrupt_histories_are_rejected_before_any_append(mutate: Mutation, code: str) -> None:
    h, run_id, envs = crashed_run()
    corrupted = mutate(envs, h)
    h.events.rewrite(run_id, corrupted)  # type: ignore[attr-defined]
    with pytest.raises(MfmError) as info:
        h.engine().resume(run_id)
    assert info.value.code == code
    assert h.events.read_range(run_id) == corrupted


def _tamper_snapshot_non_canonical(h: Harness, envs: list[EventEnvelope]) -> None:
    sid = str(envs[0].event.initial_snapshot_id)  # type: ignore[union-attr]
    h.artifacts._blobs[sid] = ("ContextSnapshot", b'{"input": {}}')  # type: ignore[attr-defined]


def _secret_manifest(h: Harness, envs: list[EventEnvelope]) -> None:
    import hashlib

    data = b'{"password":"x"}'
    mid = hashlib.sha256(data).hexdigest()
    h.artifacts._blobs[mid] = ("Manifest", data)  # type: ignore[attr-defined]
    rs = envs[0]
    envs[0] = rs.model_copy(
        update={"event": rs.event.model_copy(update={"manifest_id": mid})}
    )
    h.events.rewrite(rs.run_id, envs)  # type: ignore[attr-defined]


def _non_canonical_manifest(h: Harness, envs: list[EventEnvelope]) -> None:
    mid = str(envs[0].event.manifest_id)  # type: ignore[union-attr]
    kind, data = h.artifacts._blobs[mid]  # type: ignore[attr-defined]
    h.artifacts._blobs[mid] = (kind, data + b" ")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tamper", "codes"),
    [
        (_tamper_snapshot_non_canonical, {"artifact_content_address_mismatch"}),
        (_secret_manifest, {"secrets_detected"}),
        (_non_canonical_manifest, {"artifact_content_address_mismatch"}),
    ],
)
def test_corrupt_artifacts_are_rejected_before_any_append(
    tamper: Callable[[Harness, list[EventEnvelope]], None], codes: set[str]
) -> None:
    h, run_id, envs = crashed_run()
    h.events.rewrite(run_id, envs)  # type: ignore[attr-defined]
    tamper(h, envs)
    before = h.events.read_range(run_id)
    with pytest.raises(MfmError) as info:
        h.engine().resume(run_id)
    assert info.value.code in codes
    assert h.events.read_range(run_id) == before


def test_non_canonical_bytes_under_the_right_id_are_rejected() -> None:
    """Bytes that hash to the referenced id but are not canonical JSON: `artifact_not_canonical`."""
    from mfm_dist import ArtifactKind

    h, run_id, envs = crashed_run()
    data = b'{"input":{},  "z":1}'
    sid = h.artifacts.put(ArtifactKind.CONTEXT_SNAPSHOT, data)
    rs = envs[0]
    envs[0] = rs.model_copy(
        update={"event": rs.event.model_copy(update={"initial_snapshot_id": sid})}
    )
    h.events.rewrite(run_id, envs)  # type: ignore[attr-defined]
    with pytest.raises(MfmError) as info:
        h.engine().resume(run_id)
    assert info.value.code == "artifact_not_canonical"
    assert h.events.read_range(run_id) == envs


@pytest.mark.parametrize(
    ("stored", "code"),
    [
        (b'{"answer":42}', None),
        (b'{"b":1,"a":2}', "artifact_not_canonical"),
        (b'{"a": 1}', "artifact_not_canonical"),
        (b'{"a":1.5}', "artifact_float_not_allowed"),
        (b'{"token":"Bearer abc"}', "secrets_detected"),
        (b"not json", "artifact_json_decode_failed"),
    ],
)
def test_verify_checks_json_fact_payloads(stored: bytes, code: str | None) -> None:
    """`verify_run` reads every JSON fact payload the log references with the read's checks
    (docs/canonical-json.md#verified-reads) and reports the read's code."""
    from mfm_dist import ArtifactKind
    from mfm_dist.verify import verify_run

    h, run_id, envs = crashed_run()
    payload_id = h.artifacts.put(ArtifactKind.FACT_PAYLOAD, stored)
    fact = envs[0].model_copy(
        update={
            "seq": 4,
            "event": DomainEvent(
                name="fact_recorded", payload={"key": "k", "payload_id": payload_id, "meta": {}}
            ),
        }
    )
    h.events.rewrite(run_id, [*envs, fact])  # type: ignore[attr-defined]
    report = verify_run(h.events, h.artifacts, h.registry, str(run_id))
    about = [v for v in report.violations if payload_id in v.message]
    assert [v.code for v in about] == ([code] if code else [])
    if code:
        assert about[0].seq == 4
