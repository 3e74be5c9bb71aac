"""LiveIo, ReplayIo, the transport registry and the default factory (docs/io-and-replay.md)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from mfm_dist.artifacts import ArtifactKind
from mfm_dist.canonical import artifact_id_of_bytes, canonical_bytes
from mfm_dist.config import IoMode, RunConfig
from mfm_dist.errors import (
    ErrorCategory,
    InvalidInput,
    IoError,
    MfmError,
    MissingFact,
    MissingFactKey,
    SecretsDetected,
    StorageError,
)
from mfm_dist.io.base import IoCall
from mfm_dist.io.factory import DefaultIoFactory, default_io_factory
from mfm_dist.io.live import LiveIo
from mfm_dist.io.replay import ReplayIo
from mfm_dist.io.router import TransportRegistry
from support.io_helpers import CountingTransport, ExplodingTransport, FactHarness

REPLAY = RunConfig(io_mode=IoMode.REPLAY)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def registry(**groups: Any) -> TransportRegistry:
    reg = TransportRegistry()
    for group, transport in groups.items():
        reg.register(group.replace("__", "."), transport)
    return reg


def live(h: FactHarness, **groups: Any) -> LiveIo:
    return LiveIo(h.scope(), registry(**groups))


# --- LiveIo.call ------------------------------------------------------------------------------


def test_keyed_call_is_recorded_once_and_served_to_the_next_attempt() -> None:
    h = FactHarness()
    h.begin_attempt()
    prices = CountingTransport({"price": 42, "tags": ["a", "b"]})
    first = run(live(h, prices=prices).call(IoCall(namespace="prices", request={"q": 1},
                                                    fact_key="price:btc")))
    assert prices.calls == 1
    assert first.response == {"price": 42, "tags": ["a", "b"]}
    assert first.replayed is False
    assert first.payload_id == artifact_id_of_bytes(canonical_bytes(first.response))
    assert h.artifacts.get(first.payload_id) == b'{"price":42,"tags":["a","b"]}'
    assert h.fact_events() == [
        {"key": "price:btc", "payload_id": first.payload_id, "meta": {}, "attempt": 0}
    ]

    h.begin_attempt()  # attempt 1: a retry shares the run's FactIndex
    again = run(live(h, prices=prices).call(IoCall(namespace="prices", request={"q": 1},
                                                    fact_key="price:btc")))
    assert prices.calls == 1
    assert again.replayed is True
    assert again.response == first.response
    assert again.payload_id == first.payload_id
    assert len(h.fact_events()) == 1


def test_unkeyed_call_records_nothing() -> None:
    h = FactHarness()
    h.begin_attempt()
    before_events, before_blobs = h.event_bytes(), h.artifact_snapshot()
    t = CountingTransport({"n": 1.5})  # floats are fine when nothing is recorded
    io = live(h, svc=t)
    results = [run(io.call(IoCall(namespace="svc", request=None))) for _ in range(2)]
    assert t.calls == 2
    assert [r.response for r in results] == [{"n": 1.5}, {"n": 1.5}]
    assert all(r.fact_key is None and r.payload_id is None for r in results)
    assert h.event_bytes() == before_events
    assert h.artifact_snapshot() == before_blobs


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ({"price": 1.0}, "fact_payload_not_canonical"),
        ({"big": 2**60}, "fact_payload_not_canonical"),
        ({"token": "Bearer abc.def"}, "secrets_detected"),
        ({"api_key": "x"}, "secrets_detected"),
    ],
)
def test_bad_payload_is_rejected_and_nothing_is_stored(response: Any, code: str) -> None:
    h = FactHarness()
    h.begin_attempt()
    before_events, before_blobs = h.event_bytes(), h.artifact_snapshot()
    io = live(h, svc=CountingTransport(response))
    with pytest.raises(MfmError) as info:
        run(io.call(IoCall(namespace="svc", fact_key="k")))
    assert info.value.code == code
    assert "abc.def" not in str(info.value)
    assert h.event_bytes() == before_events
    assert h.artifact_snapshot() == before_blobs
    assert h.facts.lookup("k") is None
    with pytest.raises(MfmError) as again:
        run(io.record_value("k2", response))
    assert again.value.code == code
    assert h.event_bytes() == before_events
    assert h.artifact_snapshot() == before_blobs


def test_float_error_is_an_io_error_not_retryable() -> None:
    h = FactHarness()
    h.begin_attempt()
    with pytest.raises(IoError) as info:
        run(live(h, svc=CountingTransport(0.5)).call(IoCall(namespace="svc", fact_key="k")))
    assert info.value.code == "fact_payload_not_canonical"
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("key", "code"),
    [("", "fact_key_invalid"), ("my_password", "secrets_detected"),
     ("mfm:now_millis|x", "fact_key_reserved")],
)
def test_bad_fact_keys_are_rejected_before_the_transport(key: str, code: str) -> None:
    h = FactHarness()
    h.begin_attempt()
    t = CountingTransport({"a": 1})
    with pytest.raises(MfmError) as info:
        run(live(h, svc=t).call(IoCall(namespace="svc", fact_key=key)))
    assert info.value.code == code
    assert t.calls == 0
    assert "my_password" not in str(info.value)
    assert h.fact_events() == []


def test_a_concurrent_binding_wins_and_is_served() -> None:
    """If another attempt binds the key while our transport runs, the first binding wins."""
    h = FactHarness()
    h.begin_attempt()
    winner = h.artifacts.put(ArtifactKind.FACT_PAYLOAD, canonical_bytes({"v": "first"}))

    def racing(request: Any) -> Any:
        h.bind_fact("k", winner)
        return {"v": "second"}

    result = run(live(h, svc=CountingTransport(fn=racing)).call(IoCall(namespace="svc",
                                                                       fact_key="k")))
    assert result.response == {"v": "first"}
    assert result.replayed is True
    assert [e["payload_id"] for e in h.fact_events()] == [winner]


def test_sync_transports_run_off_the_event_loop_thread_and_async_ones_are_awaited() -> None:
    h = FactHarness()
    h.begin_attempt()
    loop_threads: list[int] = []
    seen: list[int] = []

    async def async_transport(request: Any) -> Any:
        await asyncio.sleep(0)
        return {"async": request}

    def sync_transport(request: Any) -> Any:
        seen.append(threading.get_ident())
        return {"sync": request}

    io = live(h, a=async_transport, s=sync_transport)

    async def scenario() -> tuple[Any, Any]:
        loop_threads.append(threading.get_ident())
        r1 = await io.call(IoCall(namespace="a", request=1, fact_key="ka"))
        r2 = await io.call(IoCall(namespace="s.sub", request=2, fact_key="ks"))
        return r1.response, r2.response

    assert run(scenario()) == ({"async": 1}, {"sync": 2})
    assert seen and seen[0] != loop_threads[0]


# --- record_value / get_recorded_fact ---------------------------------------------------------


def test_record_value_is_single_assignment() -> None:
    h = FactHarness()
    h.begin_attempt()
    io = live(h)
    assert run(io.get_recorded_fact("effect:1")) is None
    pid = run(io.record_value("effect:1", {"tx": "0xabc"}))
    assert run(io.record_value("effect:1", {"tx": "0xabc"})) == pid
    with pytest.raises(IoError) as info:
        run(io.record_value("effect:1", {"tx": "0xdef"}))
    assert info.value.code == "fact_payload_conflict"
    assert info.value.retryable is False
    assert run(io.get_recorded_fact("effect:1")) == {"tx": "0xabc"}
    assert len(h.fact_events()) == 1


# --- time and randomness ----------------------------------------------------------------------


def test_time_and_randomness_are_facts_under_ordered_derived_keys() -> None:
    h = FactHarness()
    h.begin_attempt()
    io = live(h)
    t0 = run(io.now_millis())
    t1 = run(io.now_millis())
    rnd = run(io.random_bytes(16))
    assert isinstance(t0, int) and isinstance(t1, int) and len(rnd) == 16
    prefix = f"run:{h.run_id}|state:{h.state_id}|attempt:0"
    keys = [e["key"] for e in h.fact_events()]
    assert keys == [
        f"mfm:now_millis|{prefix}|ord:0",
        f"mfm:now_millis|{prefix}|ord:1",
        f"mfm:random_bytes|{prefix}|ord:2",
    ]
    ids = [e["payload_id"] for e in h.fact_events()]
    assert h.artifacts.get(ids[0]) == str(t0).encode()
    assert h.artifacts.get(ids[1]) == str(t1).encode()
    assert h.artifacts.get(ids[2]) == rnd  # stored raw

    h.begin_attempt()  # a retry records new values under attempt 1
    run(live(h).now_millis())
    assert h.fact_events()[-1]["key"] == (
        f"mfm:now_millis|run:{h.run_id}|state:{h.state_id}|attempt:1|ord:0"
    )


def test_bound_derived_keys_are_served_not_redrawn() -> None:
    h = FactHarness()
    h.begin_attempt()
    first = live(h)
    t0, r0 = run(first.now_millis()), run(first.random_bytes(8))
    second = live(h)  # a fresh scope of the same attempt counts ordinals from 0 again
    assert run(second.now_millis()) == t0
    assert run(second.random_bytes(8)) == r0
    assert len(h.fact_events()) == 2
    with pytest.raises(IoError) as info:
        run(live(h).random_bytes(-1))
    assert info.value.code == "random_bytes_invalid"


# --- ReplayIo ---------------------------------------------------------------------------------


def _record_live_attempt(h: FactHarness) -> tuple[Any, int, bytes]:
    h.begin_attempt()
    io = live(h, svc=CountingTransport({"answer": 42}))
    response = run(io.call(IoCall(namespace="svc", request={"q": 1}, fact_key="q1"))).response
    return response, run(io.now_millis()), run(io.random_bytes(32))


def test_replay_serves_recorded_facts_in_order_and_never_touches_a_transport() -> None:
    h = FactHarness()
    response, t, rnd = _record_live_attempt(h)
    before = h.event_bytes()
    boom = ExplodingTransport()
    factory = default_io_factory(registry(svc=boom))
    io = factory(h.scope(REPLAY))
    assert isinstance(io, ReplayIo)
    result = run(io.call(IoCall(namespace="svc", request={"q": 1}, fact_key="q1")))
    assert result.response == response and result.replayed is True
    assert run(io.now_millis()) == t
    assert run(io.random_bytes(32)) == rnd
    assert run(io.record_value("q1", {"answer": 42})) == result.payload_id
    assert run(io.get_recorded_fact("q1")) == {"answer": 42}
    run(asyncio.wait_for(io.sleep_ms(10**9), timeout=30))  # a no-op
    assert boom.calls == 0
    assert h.event_bytes() == before  # replay appends nothing


def test_replay_never_builds_the_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(cls: Any, environ: Any = None) -> Any:
        raise AssertionError("TransportRegistry.default() was called")

    monkeypatch.setattr(TransportRegistry, "default", classmethod(refuse))
    h = FactHarness()
    h.begin_attempt()
    assert isinstance(default_io_factory()(h.scope(REPLAY)), ReplayIo)


def test_replay_missing_fact_and_missing_key() -> None:
    h = FactHarness()
    h.begin_attempt()
    io = ReplayIo(h.scope(REPLAY))
    with pytest.raises(MissingFactKey) as no_key:
        run(io.call(IoCall(namespace="svc", request={})))
    assert no_key.value.code == "missing_fact_key"
    with pytest.raises(MissingFact) as missing:
        run(io.call(IoCall(namespace="svc", fact_key="nope")))
    assert missing.value.code == "missing_fact"
    assert missing.value.info.category == ErrorCategory.RPC
    assert missing.value.retryable is False
    for op in (io.now_millis(), io.random_bytes(4), io.record_value("nope", 1)):
        with pytest.raises(MissingFact):
            run(op)

    retry_cfg = RunConfig(io_mode=IoMode.REPLAY, replay_missing_fact_retryable=True)
    with pytest.raises(MissingFact) as retryable:
        run(ReplayIo(h.scope(retry_cfg)).call(IoCall(namespace="svc", fact_key="nope")))
    assert retryable.value.retryable is True


def test_replay_record_value_must_match() -> None:
    h = FactHarness()
    h.begin_attempt()
    run(live(h).record_value("effect", {"done": True}))
    with pytest.raises(IoError) as info:
        run(ReplayIo(h.scope(REPLAY)).record_value("effect", {"done": False}))
    assert info.value.code == "fact_payload_conflict"


@pytest.mark.parametrize(
    ("stored", "code"),
    [
        (b'{"b":1, "a":2}', "artifact_not_canonical"),
        (b'{"a":1.5}', "artifact_float_not_allowed"),
        (b"not json", "artifact_json_decode_failed"),
    ],
)
def test_replayed_json_facts_must_be_canonical(stored: bytes, code: str) -> None:
    h = FactHarness()
    h.begin_attempt()
    pid = h.artifacts.put(ArtifactKind.FACT_PAYLOAD, stored)
    h.bind_fact("k", pid)
    for io in (ReplayIo(h.scope(REPLAY)), live(h, svc=ExplodingTransport())):
        with pytest.raises(StorageError) as info:
            run(io.call(IoCall(namespace="svc", fact_key="k")))
        assert info.value.code == code


def test_tampered_fact_bytes_are_rejected() -> None:
    h = FactHarness()
    _record_live_attempt(h)
    by_key = {e["key"].split("|")[0]: e["payload_id"] for e in h.fact_events()}
    h.artifacts.tamper(by_key["q1"], b'{"answer":43}')
    h.artifacts.tamper(by_key["mfm:random_bytes"], b"\x00" * 32)
    io = ReplayIo(h.scope(REPLAY))
    with pytest.raises(StorageError) as info:
        run(io.call(IoCall(namespace="svc", fact_key="q1")))
    assert info.value.code == "artifact_content_address_mismatch"
    run(io.now_millis())
    with pytest.raises(StorageError) as raw:
        run(io.random_bytes(32))
    assert raw.value.code == "artifact_content_address_mismatch"
    with pytest.raises(StorageError):
        run(live(h).get_recorded_fact("q1"))


# --- registry and factory ---------------------------------------------------------------------


def test_registry_routes_by_longest_group() -> None:
    a, ab, b = CountingTransport("a"), CountingTransport("ab"), CountingTransport("b")
    reg = registry(a=a, a__b=ab, b=b)
    assert reg.resolve("a") is a
    assert reg.resolve("a.c") is a
    assert reg.resolve("a.b") is ab
    assert reg.resolve("a.b.c") is ab
    assert reg.groups() == ["a", "a.b", "b"]
    for bad in ("ab", "a_b", "", "c.a"):
        with pytest.raises(IoError) as info:
            reg.resolve(bad)
        assert info.value.code == "io_unknown_namespace"


def test_unknown_namespace_does_not_echo_the_request_or_a_secret_namespace() -> None:
    h = FactHarness()
    h.begin_attempt()
    with pytest.raises(IoError) as info:
        run(live(h).call(IoCall(namespace="weather", request={"city": "zurich-xyz"})))
    assert info.value.code == "io_unknown_namespace"
    assert "zurich-xyz" not in str(info.value) and "zurich-xyz" not in str(info.value.info)
    assert "weather" in info.value.info.message
    with pytest.raises(IoError) as secret:
        TransportRegistry().resolve("svc.api_key_abc")
    assert "api_key" not in str(secret.value.info)


def test_registry_rejects_bad_and_duplicate_groups() -> None:
    reg = TransportRegistry()
    reg.register("svc", CountingTransport())
    for bad in ("", ".svc", "svc.", "a..b", "password"):
        with pytest.raises(InvalidInput) as info:
            reg.register(bad, CountingTransport())
        assert info.value.code == "io_transport_group_invalid"
    with pytest.raises(InvalidInput) as dup:
        reg.register("svc", CountingTransport())
    assert dup.value.code == "io_transport_group_duplicate"


def test_default_registry_and_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFM_EXEC_ALLOW", "")
    monkeypatch.setenv("MFM_HTTP_ALLOW_HOSTS", "")
    reg = TransportRegistry.default()
    assert reg.groups() == ["exec", "http"]
    factory = DefaultIoFactory()
    h = FactHarness()
    h.begin_attempt()
    io = factory(h.scope())
    assert isinstance(io, LiveIo)
    again = factory(h.scope())
    assert isinstance(again, LiveIo)
    assert again.transports is io.transports  # built once, then shared
    with pytest.raises(IoError) as info:  # exec is disabled by an empty allow-list
        run(io.call(IoCall(namespace="exec", request={
            "kind": "run_program_v1", "program_path": "/bin/true"})))
    assert info.value.code == "exec_program_not_allowed"
    given = registry(svc=CountingTransport({"ok": True}))
    provided = default_io_factory(given)(h.scope())
    assert isinstance(provided, LiveIo) and provided.transports is given


def test_secret_error_types_are_the_core_ones() -> None:
    h = FactHarness()
    h.begin_attempt()
    with pytest.raises(SecretsDetected):
        run(live(h).record_value("k", {"seed_phrase": "x"}))
