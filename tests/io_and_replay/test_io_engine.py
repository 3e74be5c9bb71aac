"""Facts, replay and effectively-once side effects through the engine (docs/io-and-replay.md)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mfm_dist import FnState, IoCall, IoMode, RetryPolicy, RunConfig, RunPhase, StateError
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.errors import StorageError
from mfm_dist.events import DomainEvent, StateCompleted, StateFailed
from mfm_dist.examples.io_demo import DEFAULT_PROGRAM
from mfm_dist.io.factory import default_io_factory
from mfm_dist.io.router import TransportRegistry
from mfm_dist.replay_check import replay_run
from mfm_dist.stores import InMemoryEventStore
from mfm_dist.verify import verify_run
from support.engine_helpers import GraphOp, Harness, registry_with
from support.io_helpers import CountingTransport, ExplodingTransport, JsonHandler, loopback_server


def facts_for(h: Harness, run_id: str, key: str) -> list[DomainEvent]:
    return [
        e.event
        for e in h.events.read_range(run_id)  # type: ignore[arg-type]
        if isinstance(e.event, DomainEvent)
        and e.event.name == "fact_recorded"
        and e.event.payload["key"] == key
    ]


def keyed_call_state(fail_first: bool) -> FnState:
    async def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
        result = await io.call(IoCall(namespace="svc", request={"q": 1}, fact_key="answer"))
        if fail_first and rec.attempt == 0:
            raise StateError("transient", "after the call", retryable=True)
        ctx.set("answer", result.response)

    return FnState(fn)


def registry_for(transport: Any) -> TransportRegistry:
    reg = TransportRegistry()
    reg.register("svc", transport)
    return reg


def test_keyed_call_runs_the_transport_once_across_a_retry() -> None:
    transport = CountingTransport({"value": 42})
    h = Harness(registry_with(GraphOp("once", {"a": keyed_call_state(fail_first=True)})))
    cfg = RunConfig(retry_policy=RetryPolicy(max_attempts=2))
    result = h.run("once", {}, cfg, io_factory=default_io_factory(registry_for(transport)))
    assert result.phase == RunPhase.COMPLETED
    assert transport.calls == 1
    assert len(facts_for(h, result.run_id, "answer")) == 1


class CrashBeforeCompletion(InMemoryEventStore):
    armed = True

    def append(self, run_id, expected_seq, envelopes):  # type: ignore[no-untyped-def]
        if self.armed and any(isinstance(e.event, StateCompleted) for e in envelopes):
            self.armed = False
            raise StorageError("simulated_crash", "died right after the effect was recorded")
        return super().append(run_id, expected_seq, envelopes)


def test_keyed_call_runs_the_transport_once_across_crash_and_resume() -> None:
    transport = CountingTransport({"value": 7})
    h = Harness(
        registry_with(GraphOp("crash", {"a": keyed_call_state(fail_first=False)})),
        events=CrashBeforeCompletion(),
    )
    factory = default_io_factory(registry_for(transport))
    with pytest.raises(StorageError):
        h.run("crash", {}, io_factory=factory)
    run_id = h.events.list_runs()[0].run_id
    assert h.engine(io_factory=factory).resume(run_id).phase == RunPhase.COMPLETED
    assert transport.calls == 1
    assert len(facts_for(h, run_id, "answer")) == 1


class EffectCounter:
    """An external system: counts POSTs per idempotency key (the effect lives outside the run)."""

    def __init__(self) -> None:
        self.posts = 0
        self.lock = threading.Lock()

    def route(self, handler: JsonHandler) -> None:
        handler.read_body()
        with self.lock:
            self.posts += 1
            count = self.posts
        handler.send_json(200, {"receipt": count})


def quote_route(handler: JsonHandler) -> None:
    handler.send_json(200, {"symbol": "MFM", "price_cents": 12345})


@contextlib.contextmanager
def io_demo_services(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Any, EffectCounter, dict[str, str]]]:
    """A local quote API and publish endpoint (with its effect counter), the allow-lists
    io_demo needs, and the matching run input."""
    counter = EffectCounter()
    with loopback_server() as server:
        server.routes["/quote.json"] = quote_route
        server.routes["/publish"] = counter.route
        monkeypatch.setenv("MFM_HTTP_ALLOW_HOSTS", f"127.0.0.1:{server.port}")
        monkeypatch.setenv("MFM_EXEC_ALLOW", str(DEFAULT_PROGRAM.parent))
        run_input = {"quote_url": server.url("/quote.json"), "publish_url": server.url("/publish")}
        yield server, counter, run_input


def test_side_effect_applied_once_across_crash_and_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    with io_demo_services(monkeypatch) as (server, counter, run_input):
        h = Harness(registry_with(), events=CrashPublish())
        with pytest.raises(StorageError):
            h.run("io_demo", run_input)
        assert counter.posts == 1  # the effect happened, then the process "died"
        run_id = h.events.list_runs()[0].run_id
        result = h.engine().resume(run_id)
        assert result.phase == RunPhase.COMPLETED
        assert counter.posts == 1  # the resumed attempt served the recorded proof
        final = SnapshotStore(h.artifacts).load(str(result.final_snapshot_id))
        assert final["publish_receipt"] == {"receipt": 1}
        # The POST carried the idempotency key as a header; no header is ever stored.
        assert any("Idempotency-Key" in headers for headers in server.seen_headers)
        published = [
            e.event
            for e in h.events.read_range(run_id)
            if isinstance(e.event, DomainEvent) and e.event.name == "published"
        ]
        assert published and published[-1].payload == {"replayed": True}


class CrashPublish(InMemoryEventStore):
    """Dies on the first StateCompleted of the publish state: right after its effect."""

    armed = True

    def append(self, run_id, expected_seq, envelopes):  # type: ignore[no-untyped-def]
        for env in envelopes:
            if (
                self.armed
                and isinstance(env.event, StateCompleted)
                and str(env.event.state_id).endswith(".publish")
            ):
                self.armed = False
                raise StorageError("simulated_crash", "died after the side effect")
        return super().append(run_id, expected_seq, envelopes)


def test_io_demo_replays_bit_for_bit_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    with io_demo_services(monkeypatch) as (_server, _counter, run_input):
        h = Harness(registry_with())
        result = h.run("io_demo", run_input)
        assert result.phase == RunPhase.COMPLETED, result.error
    # The server is gone and no transport may be built: replay must not need either.
    monkeypatch.delenv("MFM_HTTP_ALLOW_HOSTS")
    monkeypatch.delenv("MFM_EXEC_ALLOW")
    exploding = TransportRegistry()
    exploding.register("http", ExplodingTransport())
    exploding.register("exec", ExplodingTransport())
    report = replay_run(
        h.events, h.artifacts, h.registry, result.run_id, default_io_factory(exploding)
    )
    assert report.ok, report
    assert [s.match for s in report.states] == [True] * 4
    final = SnapshotStore(h.artifacts).load(str(result.final_snapshot_id))
    quote = json.dumps(final["quote"], separators=(",", ":"))
    assert final["measurement"] == {"stdin_bytes": len(quote)}
    kinds = [e.event.payload["key"] for e in h.events.read_range(result.run_id)
             if isinstance(e.event, DomainEvent) and e.event.name == "fact_recorded"]
    assert "quote" in kinds and "measurement" in kinds and "publish" in kinds
    stamp_keys = [k for k in kinds if k.startswith("mfm:")]
    assert [k.split("|")[0] for k in stamp_keys] == ["mfm:now_millis", "mfm:random_bytes"]
    assert stamp_keys[0].endswith("|attempt:0|ord:0") and stamp_keys[1].endswith("|ord:1")
    assert f"|run:{result.run_id}|state:io_demo.main.stamp|" in stamp_keys[0]
    assert verify_run(h.events, h.artifacts, h.registry, result.run_id).ok


def test_time_and_random_derived_keys_in_order() -> None:
    async def clocky(ctx, io, rec):  # type: ignore[no-untyped-def]
        a = await io.now_millis()
        b = await io.now_millis()
        r = await io.random_bytes(4)
        ctx.set("t", [a, b])
        ctx.set("r", r.hex())

    h = Harness(registry_with(GraphOp("clock", {"a": FnState(clocky)})))
    result = h.run("clock", {})
    keys = [e.event.payload["key"] for e in h.events.read_range(result.run_id)
            if isinstance(e.event, DomainEvent) and e.event.name == "fact_recorded"]
    prefix = f"|run:{result.run_id}|state:clock.main.a|attempt:0|"
    assert keys == [
        f"mfm:now_millis{prefix}ord:0",
        f"mfm:now_millis{prefix}ord:1",
        f"mfm:random_bytes{prefix}ord:2",
    ]
    report = replay_run(h.events, h.artifacts, h.registry, result.run_id)
    assert report.ok


def test_replay_reports_the_first_divergence() -> None:
    transport = CountingTransport({"value": 1})

    def version(multiplier: int) -> GraphOp:
        async def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
            res = await io.call(IoCall(namespace="svc", request={}, fact_key="v"))
            ctx.set("value", res.response["value"] * multiplier)
            ctx.set("stable", 1)

        return GraphOp("drift", {"a": FnState(lambda c, i, r: c.set("x", 1)), "b": FnState(fn)},
                       [("a", "b")])

    h = Harness(registry_with(version(1)))
    result = h.run("drift", {}, io_factory=default_io_factory(registry_for(transport)))
    # The code changed since the run: replay names the state and the key that differ.
    changed = registry_with(version(3))
    report = replay_run(h.events, h.artifacts, changed, result.run_id)
    assert not report.ok
    first = report.first_divergence
    assert first is not None and first.state_id == "drift.main.b"
    assert first.first_differing_key == "value"
    assert [s.match for s in report.states] == [True, False]


def test_replay_reports_a_missing_fact() -> None:
    def version(key: str) -> GraphOp:
        async def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
            res = await io.call(IoCall(namespace="svc", request={}, fact_key=key))
            ctx.set("v", res.response)

        return GraphOp("keys", {"a": FnState(fn)})

    h = Harness(registry_with(version("old_key")))
    transport = CountingTransport(5)
    result = h.run("keys", {}, io_factory=default_io_factory(registry_for(transport)))
    report = replay_run(h.events, h.artifacts, registry_with(version("new_key")), result.run_id)
    first = report.first_divergence
    assert first is not None and first.error_code == "missing_fact"
    assert first.missing_fact_key == "new_key"


@pytest.mark.parametrize("retryable", [False, True])
def test_replay_mode_missing_fact_fails_the_run(retryable: bool) -> None:
    h = Harness(registry_with(GraphOp("miss", {"a": keyed_call_state(fail_first=False)})))
    cfg = RunConfig(io_mode=IoMode.REPLAY, replay_missing_fact_retryable=retryable)
    io_factory = default_io_factory(registry_for(ExplodingTransport()))
    result = h.run("miss", {}, cfg, io_factory=io_factory)
    assert result.phase == RunPhase.FAILED
    failed = [
        e.event for e in h.events.read_range(result.run_id) if isinstance(e.event, StateFailed)
    ]
    assert failed[0].error.code == "missing_fact"
    assert failed[0].error.retryable is retryable
    assert failed[0].error.category.value == "Rpc"


def test_missing_fact_key_in_replay_mode() -> None:
    async def unkeyed(ctx, io, rec):  # type: ignore[no-untyped-def]
        await io.call(IoCall(namespace="svc", request={}))

    h = Harness(registry_with(GraphOp("nokey", {"a": FnState(unkeyed)})))
    result = h.run("nokey", {}, RunConfig(io_mode=IoMode.REPLAY))
    assert result.error is not None and result.error.code == "missing_fact_key"


def test_dry_run_skips_the_side_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    with io_demo_services(monkeypatch) as (_server, counter, run_input):
        h = Harness(registry_with())
        result = h.run("io_demo", run_input, RunConfig(skip_tags=["apply_side_effect"]))
    assert result.phase == RunPhase.COMPLETED and counter.posts == 0


def _unused(path: Path) -> None:
    return None


def test_user_transports_from_an_operations_module() -> None:
    from mfm_dist.operations import OperationRegistry
    from support import custom_transport_ops

    custom_transport_ops.CALLS.clear()
    registry = OperationRegistry.default(["support.custom_transport_ops"])
    h = Harness(registry)
    prepared_engine = h.engine(io_factory=registry.io_factory())
    from mfm_dist import prepare_run, store_manifest

    prepared = prepare_run(registry, "price_lookup", {}, RunConfig())
    store_manifest(h.artifacts, prepared.manifest)
    result = prepared_engine.start(
        plan=prepared.plan,
        run_config=prepared.run_config,
        manifest=prepared.manifest,
        manifest_id=prepared.manifest_id,
        initial_context=prepared.initial_context,
    )
    assert result.phase == RunPhase.COMPLETED, result.error
    assert custom_transport_ops.CALLS == [{"sku": "A-1"}]
    final = SnapshotStore(h.artifacts).load(str(result.final_snapshot_id))
    assert final["price"] == {"sku": "A-1", "price_cents": 1999}
    # The engine's default IO factory picks the hook up too (no explicit factory).
    assert h.engine(io_factory=None).resume(result.run_id).phase == RunPhase.COMPLETED
