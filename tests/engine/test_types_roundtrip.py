"""Persisted JSON shapes (docs/events.md#serialized-shapes): every shape round-trips to literal
expected text."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from mfm_dist import (
    BuildInfo,
    Duration,
    EventEnvelope,
    ExponentialBackoff,
    FanOutJoin,
    FixedBackoff,
    IoMode,
    RetryPolicy,
    RunConfig,
    RunManifest,
    RunResult,
)
from mfm_dist.config import CustomCheckpointing, CustomEventProfile, EventProfileLevel
from mfm_dist.errors import ErrorCategory, ErrorInfo
from mfm_dist.events import (
    DomainEvent,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.results import RunPhase
from mfm_dist.state import IdempotencyKey, SideEffects, StateMeta

A = "a" * 64
B = "b" * 64
RUN = "1b4e28ba-2fa1-41d2-883f-0e3b2f1b5b2a"

EVENTS = [
    (
        RunStarted(op_id="demo", manifest_id=A, initial_snapshot_id=B),
        '{"Kernel":{"RunStarted":{"op_id":"demo","manifest_id":"' + A
        + '","initial_snapshot_id":"' + B + '"}}}',
    ),
    (
        StateEntered(state_id="m.main.a", attempt=0, base_snapshot_id=A),
        '{"Kernel":{"StateEntered":{"state_id":"m.main.a","attempt":0,"base_snapshot_id":"'
        + A + '"}}}',
    ),
    (
        StateCompleted(state_id="m.main.a", context_snapshot_id=B),
        '{"Kernel":{"StateCompleted":{"state_id":"m.main.a","context_snapshot_id":"' + B + '"}}}',
    ),
    (
        StateFailed(
            state_id="m.main.a",
            error=ErrorInfo(code="boom", category=ErrorCategory.RPC, retryable=True, message="m"),
            failure_snapshot_id=None,
        ),
        '{"Kernel":{"StateFailed":{"state_id":"m.main.a","error":{"code":"boom","category":"Rpc",'
        '"retryable":true,"message":"m","details":null},"failure_snapshot_id":null}}}',
    ),
    (
        RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=B),
        '{"Kernel":{"RunCompleted":{"status":"Completed","final_snapshot_id":"' + B + '"}}}',
    ),
    (
        RunCompleted(status=RunStatus.FAILED, final_snapshot_id=None),
        '{"Kernel":{"RunCompleted":{"status":"Failed","final_snapshot_id":null}}}',
    ),
    (
        DomainEvent(name="fact_recorded", payload={"key": "k", "payload_id": A, "meta": {}}),
        '{"Domain":{"name":"fact_recorded","payload":{"key":"k","payload_id":"' + A
        + '","meta":{}},"payload_ref":null}}',
    ),
]


@pytest.mark.parametrize(("event", "text"), EVENTS, ids=lambda x: type(x).__name__)
def test_event_shapes_round_trip(event: object, text: str) -> None:
    env = EventEnvelope(run_id=RUN, seq=1, ts_millis=7, event=event)
    dumped = env.model_dump_json()
    expected = (
        '{"run_id":"' + RUN + '","seq":1,"ts_millis":7,"event":' + text
        + ',"state_id":null,"attempt":null}'
    )
    assert dumped == expected
    assert EventEnvelope.model_validate_json(expected) == env


def test_envelope_attribution_and_canonical_bytes() -> None:
    env = EventEnvelope(
        run_id=RUN,
        seq=2,
        ts_millis=1,
        event=StateEntered(state_id="m.main.a", attempt=1, base_snapshot_id=A),
        state_id="m.main.a",
        attempt=1,
    )
    assert (
        env.to_bytes()
        == (
            '{"attempt":1,"event":{"Kernel":{"StateEntered":{"attempt":1,"base_snapshot_id":"'
            + A + '","state_id":"m.main.a"}}},"run_id":"' + RUN
            + '","seq":2,"state_id":"m.main.a","ts_millis":1}'
        ).encode()
    )
    assert EventEnvelope.from_bytes(env.to_bytes()) == env


RUN_CONFIGS = [
    (
        RunConfig(),
        '{"io_mode":"Live","retry_policy":{"max_attempts":1,"backoff":{"Fixed":{"delay":'
        '{"secs":0,"nanos":0}}}},"event_profile":"Normal","execution_mode":"Sequential",'
        '"context_checkpointing":"AfterEveryState","replay_missing_fact_retryable":false,'
        '"skip_tags":[],"nix_flake_allowlist":[]}',
    ),
    (
        RunConfig(
            io_mode=IoMode.REPLAY,
            retry_policy=RetryPolicy(
                max_attempts=5,
                backoff=ExponentialBackoff(base=Duration.from_millis(250), max=Duration(secs=2)),
            ),
            event_profile=EventProfileLevel.MINIMAL,
            execution_mode=FanOutJoin(max_concurrency=8),
            context_checkpointing=CustomCheckpointing(value="every_other"),
            replay_missing_fact_retryable=True,
            skip_tags=["apply_side_effect"],
            nix_flake_allowlist=["github:org/repo"],
        ),
        '{"io_mode":"Replay","retry_policy":{"max_attempts":5,"backoff":{"Exponential":{"base":'
        '{"secs":0,"nanos":250000000},"max":{"secs":2,"nanos":0}}}},"event_profile":"Minimal",'
        '"execution_mode":{"FanOutJoin":{"max_concurrency":8}},"context_checkpointing":'
        '{"Custom":"every_other"},"replay_missing_fact_retryable":true,"skip_tags":'
        '["apply_side_effect"],"nix_flake_allowlist":["github:org/repo"]}',
    ),
    (
        RunConfig(
            retry_policy=RetryPolicy(
                max_attempts=2, backoff=FixedBackoff(delay=Duration(secs=1, nanos=5))
            ),
            event_profile=EventProfileLevel.VERBOSE,
        ),
        '{"io_mode":"Live","retry_policy":{"max_attempts":2,"backoff":{"Fixed":{"delay":'
        '{"secs":1,"nanos":5}}}},"event_profile":"Verbose","execution_mode":"Sequential",'
        '"context_checkpointing":"AfterEveryState","replay_missing_fact_retryable":false,'
        '"skip_tags":[],"nix_flake_allowlist":[]}',
    ),
    (
        RunConfig(event_profile=CustomEventProfile(value="audit")),
        '{"io_mode":"Live","retry_policy":{"max_attempts":1,"backoff":{"Fixed":{"delay":'
        '{"secs":0,"nanos":0}}}},"event_profile":{"Custom":"audit"},"execution_mode":"Sequential",'
        '"context_checkpointing":"AfterEveryState","replay_missing_fact_retryable":false,'
        '"skip_tags":[],"nix_flake_allowlist":[]}',
    ),
]


@pytest.mark.parametrize(("config", "text"), RUN_CONFIGS)
def test_run_config_round_trip(config: RunConfig, text: str) -> None:
    assert config.model_dump_json() == text
    assert RunConfig.model_validate_json(text) == config


@pytest.mark.parametrize(
    "bad",
    [
        '{"execution_mode":{"FanOutJoin":{"max_concurrency":0}}}',
        '{"execution_mode":"Parallel"}',
        '{"event_profile":"Loud"}',
        '{"retry_policy":{"max_attempts":1,"backoff":{"Linear":{}}}}',
        '{"unknown_field":1}',
    ],
)
def test_run_config_rejects_bad_shapes(bad: str) -> None:
    with pytest.raises(ValueError):
        RunConfig.model_validate_json(bad)


def test_manifest_round_trip() -> None:
    manifest = RunManifest(
        op_id="fanout_demo",
        op_version="1",
        input_params={"pipeline": {"machine_id": "fanout_demo"}, "input": {"items": 3}},
        run_config=RunConfig(),
        build=BuildInfo(
            git_commit="0" * 40,
            cargo_lock_hash=None,
            flake_lock_hash=None,
            rustc_version="CPython 3.11.7",
            target_triple="x86_64-linux",
            env_allowlist=["HOME"],
        ),
    )
    text = (
        '{"op_id":"fanout_demo","op_version":"1","input_params":{"pipeline":{"machine_id":'
        '"fanout_demo"},"input":{"items":3}},"run_config":' + RUN_CONFIGS[0][1] + ',"build":'
        '{"git_commit":"' + "0" * 40 + '","cargo_lock_hash":null,"flake_lock_hash":null,'
        '"rustc_version":"CPython 3.11.7","target_triple":"x86_64-linux","env_allowlist":["HOME"]}}'
    )
    assert manifest.model_dump_json() == text
    assert RunManifest.model_validate_json(text) == manifest
    # The manifest id is the SHA-256 of the canonical (sorted-key) bytes.
    import hashlib

    assert manifest.manifest_id() == hashlib.sha256(manifest.canonical()).hexdigest()
    assert manifest.canonical().startswith(b'{"build":{"cargo_lock_hash":null')


def test_run_result_round_trip() -> None:
    result = RunResult(run_id=RUN, phase=RunPhase.COMPLETED, final_snapshot_id=A)
    text = (
        '{"run_id":"' + RUN + '","phase":"Completed","final_snapshot_id":"' + A
        + '","failed_state":null,"error":null}'
    )
    assert result.model_dump_json() == text
    assert RunResult.model_validate_json(text) == result
    failed = RunResult(
        run_id=RUN,
        phase=RunPhase.FAILED,
        final_snapshot_id=None,
        failed_state="m.main.b",
        error=ErrorInfo(code="x", category=ErrorCategory.UNKNOWN, message="y"),
    )
    assert RunResult.model_validate_json(failed.model_dump_json()) == failed


def test_state_meta_shapes() -> None:
    meta = StateMeta(
        tags=["apply_side_effect"],
        side_effects=SideEffects.APPLY_SIDE_EFFECT,
        idempotency=IdempotencyKey(value="transfer-1"),
    )
    text = (
        '{"tags":["apply_side_effect"],"depends_on":[],"depends_on_strategy":"Latest",'
        '"side_effects":"ApplySideEffect","idempotency":{"Key":"transfer-1"}}'
    )
    assert meta.model_dump_json() == text
    assert StateMeta.model_validate_json(text) == meta
    assert StateMeta().model_dump()["idempotency"] == "None"


def test_error_shapes() -> None:
    from mfm_dist.errors import NotFound

    err = NotFound("run x not found", code="run_not_found")
    assert err.to_shape() == {
        "Storage": {
            "NotFound": {
                "code": "run_not_found",
                "category": "Storage",
                "retryable": False,
                "message": "run x not found",
                "details": None,
            }
        }
    }


@pytest.mark.parametrize(
    "change",
    [{"seq": "1"}, {"seq": 1.0}, {"seq": True}, {"ts_millis": "5"}, {"attempt": False}],
    ids=["seq-text", "seq-float", "seq-bool", "ts-text", "attempt-bool"],
)
def test_envelope_numbers_are_never_coerced(change: dict[str, object]) -> None:
    """A persisted envelope whose numbers are text, floats or booleans is not an envelope
    (it is refused, not silently read as another value)."""
    valid = {
        "run_id": "00000000-0000-4000-8000-000000000000",
        "seq": 1,
        "ts_millis": 5,
        "event": {"Kernel": {"RunCompleted": {"status": "Completed", "final_snapshot_id": None}}},
    }
    EventEnvelope.model_validate(valid)
    with pytest.raises(ValidationError):
        EventEnvelope.model_validate({**valid, **change, "state_id": None})
    with pytest.raises(ValidationError):
        EventEnvelope.from_bytes(orjson.dumps({**valid, **change}))


@pytest.mark.parametrize(
    "config",
    [
        {"retry_policy": {"max_attempts": "3", "backoff": {"Fixed": {"secs": 0, "nanos": 0}}}},
        {"execution_mode": {"FanOutJoin": {"max_concurrency": 2.0}}},
    ],
)
def test_run_config_numbers_are_never_coerced(config: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RunConfig.model_validate(config)
