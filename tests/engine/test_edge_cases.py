"""Regression tests for defects found in review (each failed before its fix)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest

from mfm_dist import (
    Duration,
    FanOutJoin,
    FixedBackoff,
    FnState,
    Pipeline,
    PipelineStep,
    RetryPolicy,
    RunConfig,
    RunPhase,
    StateError,
    prepare_run,
    store_manifest,
)
from mfm_dist.errors import MfmError, StorageError
from mfm_dist.events import DomainEvent, StateEntered, StateFailed
from mfm_dist.ids import OpId
from mfm_dist.plan import ExecutionPlan, StateGraph
from mfm_dist.secrets import redact_url
from support.engine_helpers import GraphOp, Harness, registry_with

MNEMONIC = " ".join(["abandon"] * 11 + ["about"])


def failed_errors(h: Harness, run_id: str) -> list[Any]:
    return [e.event.error for e in h.events.read_range(run_id) if isinstance(e.event, StateFailed)]  # type: ignore[arg-type]


def test_mnemonic_inside_a_foreign_exception_is_redacted() -> None:
    def leak(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise ValueError(MNEMONIC)

    h = Harness(registry_with(GraphOp("mn", {"a": FnState(leak)})))
    result = h.run("mn", {})
    assert "abandon" not in (result.error.message if result.error else "")
    stored = b"".join(e.to_bytes() for e in h.events.read_range(result.run_id))
    assert b"abandon" not in stored


def test_lone_surrogates_fail_the_state_not_the_run() -> None:
    lone = FnState(lambda c, i, r: c.set("k", "x\ud800"))
    h = Harness(registry_with(GraphOp("sur", {"a": lone})))
    result = h.run("sur", {})
    assert result.phase == RunPhase.FAILED
    assert failed_errors(h, result.run_id)[0].code == "json_string_invalid"


def test_self_referencing_values_are_rejected() -> None:
    def cyc(ctx, io, rec):  # type: ignore[no-untyped-def]
        a: list[Any] = []
        a.append(a)
        ctx.set("k", a)

    h = Harness(registry_with(GraphOp("cyc", {"a": FnState(cyc)})))
    result = h.run("cyc", {})
    assert failed_errors(h, result.run_id)[0].code == "json_too_deep"


def test_cancelled_handler_is_a_state_failure() -> None:
    async def cancel(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise asyncio.CancelledError()

    h = Harness(registry_with(GraphOp("cx", {"a": FnState(cancel)})))
    result = h.run("cx", {})
    assert result.phase == RunPhase.FAILED
    assert h.kinds(result.run_id)[-1] == "RunCompleted"


def test_handlers_cannot_use_engine_reserved_codes() -> None:
    calls = []

    def fake(ctx, io, rec):  # type: ignore[no-untyped-def]
        calls.append(rec.attempt)
        raise StateError("orphan_attempt_recovered", "pretending", retryable=False)

    h = Harness(registry_with(GraphOp("oc", {"a": FnState(fake)})))
    result = h.run("oc", {})
    assert result.phase == RunPhase.FAILED and calls == [0]
    assert result.error is not None and result.error.code == "handler_reserved_code"


def test_empty_step_keeps_step_order() -> None:
    empty = GraphOp("empty", {})
    writer = GraphOp("writer", {"w": FnState(lambda c, i, r: c.set("a", 1))})
    reader = GraphOp("reader", {"r": FnState(lambda c, i, r: c.set("b", c.get("a") + 1))})
    registry = registry_with(empty, writer, reader)
    registry.register_pipeline(
        Pipeline(
            machine_id="pipe",
            pipeline_version="1",
            steps=[
                PipelineStep(step_id="s1", op_id="writer", op_version="1"),
                PipelineStep(step_id="s2", op_id="empty", op_version="1"),
                PipelineStep(step_id="s3", op_id="reader", op_version="1"),
            ],
        )
    )
    h = Harness(registry)
    result = h.run("pipe", {}, RunConfig(execution_mode=FanOutJoin(max_concurrency=4)))
    assert result.phase == RunPhase.COMPLETED, result.error


def test_start_rejects_a_plan_the_manifest_does_not_describe() -> None:
    op = GraphOp("pm", {"a": FnState(lambda c, i, r: None)})
    h = Harness(registry_with(op))
    cfg = RunConfig()
    prepared = prepare_run(h.registry, "pm", {}, cfg)
    store_manifest(h.artifacts, prepared.manifest)
    graph = StateGraph()
    graph.add("pm.main.other", FnState(lambda c, i, r: None))
    with pytest.raises(MfmError) as info:
        h.engine().start(
            plan=ExecutionPlan(op_id=OpId("pm"), graph=graph),
            run_config=cfg,
            manifest=prepared.manifest,
            manifest_id=prepared.manifest_id,
            initial_context=prepared.initial_context,
        )
    assert info.value.code == "plan_mismatch"
    assert h.events.list_runs() == []


def test_invalid_and_secret_state_ids_are_invalid_plans() -> None:
    from mfm_dist import InvalidPlan
    from mfm_dist.plan import StateNode

    bad = StateGraph(states=[StateNode("Not A State", FnState(lambda c, i, r: None))])  # type: ignore[arg-type]
    with pytest.raises(InvalidPlan):
        ExecutionPlan(op_id=OpId("x"), graph=bad).validate()
    secret = StateGraph()
    secret.add("x.main.rotate_api_key", FnState(lambda c, i, r: None))
    with pytest.raises(InvalidPlan) as info:
        ExecutionPlan(op_id=OpId("x"), graph=secret).validate()
    assert "api_key" not in str(info.value)


def test_tuples_and_lists_are_the_same_json() -> None:
    op = GraphOp(
        "tup",
        {
            "root": FnState(lambda c, i, r: c.set("x", (1, 2))),
            "c": FnState(lambda c, i, r: c.set("x", [1, 2])),
            "d": FnState(lambda c, i, r: c.set("x", [1, 2])),
        },
        [("root", "c"), ("root", "d")],
    )
    h = Harness(registry_with(op))
    par = h.run("tup", {}, RunConfig(execution_mode=FanOutJoin(max_concurrency=2)))
    seq = h.run("tup", {})
    assert par.phase == seq.phase == RunPhase.COMPLETED
    assert par.final_snapshot_id == seq.final_snapshot_id


def test_resume_reports_the_same_failure_as_start() -> None:
    def fail(code: str, delay: float) -> FnState:
        def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
            time.sleep(delay)
            raise StateError(code, code)

        return FnState(fn)

    h = Harness(
        registry_with(GraphOp("rf", {"a": fail("a_failed", 0.05), "b": fail("b_failed", 0)}))
    )
    result = h.run("rf", {}, RunConfig(execution_mode=FanOutJoin(max_concurrency=2)))
    assert result.failed_state == "rf.main.a"
    assert h.engine().resume(result.run_id) == result


def test_handlers_cannot_spoof_engine_events() -> None:
    async def spoof(ctx, io, rec):  # type: ignore[no-untyped-def]
        await rec.emit("context_merge_conflict", {"keys": ["fake"], "states": ["a.b.c", "a.b.d"]})

    h = Harness(registry_with(GraphOp("sp", {"a": FnState(spoof)})))
    result = h.run("sp", {})
    assert result.error is not None and result.error.code == "domain_event_invalid"
    assert not any(isinstance(e.event, DomainEvent) for e in h.events.read_range(result.run_id))


def test_emitted_payload_is_what_was_validated() -> None:
    async def mutate(ctx, io, rec):  # type: ignore[no-untyped-def]
        payload = {"n": 1}
        await rec.emit("note", payload)
        payload["n"] = 999

    h = Harness(registry_with(GraphOp("mu", {"a": FnState(mutate)})))
    result = h.run("mu", {})
    note = next(
        e.event for e in h.events.read_range(result.run_id) if isinstance(e.event, DomainEvent)
    )
    assert note.payload == {"n": 1}


def test_resume_honours_the_remaining_backoff() -> None:
    count = {"n": 0}

    def flaky(ctx, io, rec):  # type: ignore[no-untyped-def]
        count["n"] += 1
        if count["n"] == 1:
            raise StateError("flaky", "later", retryable=True)

    class Crash(Exception):
        pass

    def crash(_: float) -> None:
        raise Crash()

    h = Harness(registry_with(GraphOp("bo", {"a": FnState(flaky)})))
    cfg = RunConfig(
        retry_policy=RetryPolicy(
            max_attempts=3, backoff=FixedBackoff(delay=Duration.from_millis(300))
        )
    )
    with pytest.raises(Crash):
        h.run("bo", {}, cfg, sleep=crash)  # the process dies while waiting out the backoff
    run_id = h.events.list_runs()[0].run_id
    assert h.engine().resume(run_id).phase == RunPhase.COMPLETED
    envs = h.events.read_range(run_id)
    failed = next(e for e in envs if isinstance(e.event, StateFailed))
    retry = [e for e in envs if isinstance(e.event, StateEntered)][1]
    assert retry.ts_millis >= failed.ts_millis + 300


def test_listener_sees_events_in_sequence_order() -> None:
    seen: list[int] = []
    h = Harness(registry_with())
    h.run("fanout_demo", {"items": 40}, RunConfig(execution_mode=FanOutJoin(max_concurrency=8)),
          listener=lambda env: seen.append(env.seq))
    assert seen == sorted(seen) and seen[0] == 1


def test_redact_url_never_raises_and_hides_query_secrets() -> None:
    assert redact_url("redis://u:pw@host:abc/0") == "redis://***@host:abc/0"
    assert redact_url("s3://b/p?endpoint=x&secret_key=AKIA") == "s3://b/p?endpoint=x&secret_key=***"


def test_storage_errors_still_leave_the_attempt_open() -> None:
    from mfm_dist.stores import InMemoryArtifactStore

    class Broken(InMemoryArtifactStore):
        def put_raw(self, artifact_id, kind, data):  # type: ignore[no-untyped-def]
            if kind.value == "ContextSnapshot" and b'"k"' in data:
                raise StorageError("disk_full", "no space")
            return super().put_raw(artifact_id, kind, data)

    h = Harness(registry_with(GraphOp("br", {"a": FnState(lambda c, i, r: c.set("k", 1))})),
                artifacts=Broken())
    with pytest.raises(StorageError):
        h.run("br", {})
    assert h.kinds(h.events.list_runs()[0].run_id)[-1] == "StateEntered"


def test_orphan_recoveries_are_capped() -> None:
    """An attempt that dies every time (e.g. OOM-killed) must end the run, not loop forever."""
    from mfm_dist.engine.progress import MAX_ORPHAN_RECOVERIES
    from mfm_dist.stores import InMemoryEventStore

    class AlwaysDies(InMemoryEventStore):
        def append(self, run_id, expected_seq, envelopes):  # type: ignore[no-untyped-def]
            from mfm_dist.events import StateCompleted

            if any(isinstance(e.event, StateCompleted) for e in envelopes):
                raise StorageError("simulated_crash", "the worker died again")
            return super().append(run_id, expected_seq, envelopes)

    h = Harness(registry_with(GraphOp("die", {"a": FnState(lambda c, i, r: c.set("k", 1))})),
                events=AlwaysDies())
    with pytest.raises(StorageError):
        h.run("die", {})
    run_id = h.events.list_runs()[0].run_id
    for _ in range(MAX_ORPHAN_RECOVERIES):
        with pytest.raises(StorageError):
            h.engine().resume(run_id)
    result = h.engine().resume(run_id)  # the cap is reached: the run fails, cleanly
    assert result.phase == RunPhase.FAILED
    assert result.error is not None and result.error.code == "orphan_attempt_recovered"
    orphans = [e for e in failed_errors(h, run_id) if e.code == "orphan_attempt_recovered"]
    assert len(orphans) == MAX_ORPHAN_RECOVERIES + 1


def test_deeply_nested_values_within_the_limit_are_fine() -> None:
    def deep(ctx, io, rec):  # type: ignore[no-untyped-def]
        value: list[Any] = []
        cur = value
        for _ in range(300):  # deeper than orjson's own limit (254)
            nxt: list[Any] = []
            cur.append(nxt)
            cur = nxt
        ctx.set("deep", value)

    h = Harness(registry_with(GraphOp("deep", {"a": FnState(deep)})))
    result = h.run("deep", {})
    assert result.phase == RunPhase.COMPLETED, result.error
    from mfm_dist.verify import verify_run

    assert verify_run(h.events, h.artifacts, h.registry, result.run_id).ok


def test_orphans_do_not_use_up_handler_retries() -> None:
    """max_attempts counts the handler's own attempts: two crashes do not cost a retry."""
    from mfm_dist.stores import InMemoryEventStore

    calls: list[int] = []

    def flaky(ctx, io, rec):  # type: ignore[no-untyped-def]
        calls.append(rec.attempt)
        if len(calls) == 3:
            raise StateError("transient", "once", retryable=True)
        ctx.set("ok", len(calls))

    class CrashTwice(InMemoryEventStore):
        crashes = 2

        def append(self, run_id, expected_seq, envelopes):  # type: ignore[no-untyped-def]
            from mfm_dist.events import StateCompleted

            if self.crashes and any(isinstance(e.event, StateCompleted) for e in envelopes):
                self.crashes -= 1
                raise StorageError("simulated_crash", "died")
            return super().append(run_id, expected_seq, envelopes)

    h = Harness(registry_with(GraphOp("orp", {"a": FnState(flaky)})), events=CrashTwice())
    cfg = RunConfig(retry_policy=RetryPolicy(max_attempts=2))
    with pytest.raises(StorageError):
        h.run("orp", {}, cfg)
    run_id = h.events.list_runs()[0].run_id
    with pytest.raises(StorageError):
        h.engine().resume(run_id)
    result = h.engine().resume(run_id)  # attempt 2 fails retryably; attempt 3 is its retry
    assert result.phase == RunPhase.COMPLETED, result.error
    assert calls == [0, 1, 2, 3]


def test_verify_rejects_a_failed_fan_out_that_stopped_early() -> None:
    from mfm_dist.events import EventDraft, RunCompleted, RunStatus
    from mfm_dist.stores import InMemoryEventStore
    from mfm_dist.verify import verify_run

    def boom(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("boom", "no", retryable=False)

    op = GraphOp("early", {"x": FnState(boom), "y": FnState(lambda c, i, r: c.set("y", 1))})
    h = Harness(registry_with(op))
    cfg = RunConfig(execution_mode=FanOutJoin(max_concurrency=1))
    result = h.run("early", {}, cfg)
    assert verify_run(h.events, h.artifacts, h.registry, result.run_id).ok
    # Forge the same run ending right after x failed, without ever running y.
    envs = h.events.read_range(result.run_id)
    cut = next(k for k, e in enumerate(envs) if isinstance(e.event, StateFailed)) + 1
    forged = InMemoryEventStore()
    forged.append(result.run_id, 0, envs[:cut])
    final = envs[0].event.initial_snapshot_id  # type: ignore[union-attr]
    end = EventDraft(
        event=RunCompleted(status=RunStatus.FAILED, final_snapshot_id=final), ts_millis=1
    )
    forged.append(result.run_id, cut, [end.at(result.run_id, cut + 1)])
    report = verify_run(forged, h.artifacts, h.registry, result.run_id)
    assert not report.ok
    assert "verify_run_ended_early" in {v.code for v in report.violations}


def test_a_rule_breaking_batch_does_not_fail_other_callers_of_a_group_commit() -> None:
    import threading as th

    from mfm_dist.engine.local import RunWriter
    from mfm_dist.events import EventDraft, EventEnvelope, RunStarted
    from mfm_dist.events import StateCompleted as Done
    from mfm_dist.ids import RunId
    from mfm_dist.stores import InMemoryEventStore
    from mfm_dist.stores.guards import GuardViolation

    class Slow(InMemoryEventStore):
        def append(
            self, run_id: RunId, expected_seq: int, envelopes: Sequence[EventEnvelope]
        ) -> None:
            time.sleep(0.02)
            return super().append(run_id, expected_seq, envelopes)

    store, run_id, a = Slow(), RunId.mint(), "a" * 64
    started = RunStarted(op_id="x", manifest_id=a, initial_snapshot_id=a)
    store.append(run_id, 0, [EventDraft(event=started, ts_millis=0).at(run_id, 1)])
    writer = RunWriter(store, run_id, 1)
    outcomes: dict[str, object] = {}

    def good(n: int) -> None:
        drafts = [EventDraft(event=DomainEvent(name="ok", payload={"n": n}), ts_millis=0)]
        outcomes[f"good{n}"] = writer.append(drafts)

    def bad() -> None:
        drafts = [EventDraft(event=Done(state_id="x.main.a", context_snapshot_id=a), ts_millis=0,
                             state_id="x.main.a", attempt=0)]  # no open attempt: breaks a rule
        try:
            writer.append(drafts)
        except GuardViolation as exc:
            outcomes["bad"] = exc

    threads = [th.Thread(target=good, args=(n,)) for n in range(6)] + [th.Thread(target=bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(outcomes["bad"], GuardViolation)
    assert all(isinstance(outcomes[f"good{n}"], list) for n in range(6))
    assert store.head_seq(run_id) == 7


def test_coordinator_gives_free_slots_to_ready_states_before_delayed_retries() -> None:
    from mfm_dist.engine.attempt import AttemptEnv, now_millis, run_attempt
    from mfm_dist.engine.coordination import decide
    from mfm_dist.engine.history import RunHistory
    from mfm_dist.engine.lifecycle import record_run_start, validate_start
    from mfm_dist.engine.progress import RunProgress
    from mfm_dist.engine.snapshots import SnapshotStore
    from mfm_dist.io.base import FactIndex
    from mfm_dist.io.factory import default_io_factory

    def flaky(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("flaky", "later", retryable=True)

    op = GraphOp("ds", {"a": FnState(flaky), "b": FnState(lambda c, i, r: c.set("b", 1))})
    h = Harness(registry_with(op))
    cfg = RunConfig(
        execution_mode=FanOutJoin(max_concurrency=1),
        retry_policy=RetryPolicy(max_attempts=3, backoff=FixedBackoff(delay=Duration(secs=3600))),
    )
    prepared = prepare_run(h.registry, "ds", {}, cfg)
    store_manifest(h.artifacts, prepared.manifest)
    initial = validate_start(
        h.artifacts, registry=h.registry, plan=prepared.plan, run_config=cfg,
        manifest=prepared.manifest, manifest_id=prepared.manifest_id,
        initial_context=prepared.initial_context,
    )
    rid, iid = record_run_start(h.events, h.artifacts, plan=prepared.plan,
                                manifest_id=prepared.manifest_id, initial_snapshot=initial)
    snaps, plan = SnapshotStore(h.artifacts), prepared.plan.compiled
    env = AttemptEnv(run_id=rid, run_config=cfg, artifacts=h.artifacts, snapshots=snaps,
                     facts=FactIndex(), io_factory=default_io_factory(),
                     append=lambda d: h.events.append_next(rid, d))
    run_attempt(env, plan.order[0], plan.states[0], 0, str(iid), snaps.load(str(iid)))
    history = RunHistory.load(h.events, rid)
    progress = RunProgress.from_history(history, plan, cfg, snaps)
    decision = decide(history, progress, lease_alive=lambda s, a: False, reserved={},
                      now_ms=now_millis())
    assert [d.state_id for d in decision.dispatch] == ["ds.main.b"]  # a waits an hour
