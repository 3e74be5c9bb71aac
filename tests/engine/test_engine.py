"""LocalEngine semantics (docs/plans.md#starting-a-run, docs/execution.md#one-attempt,
docs/execution.md#resume) on the in-memory stores."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from mfm_dist import (
    Duration,
    EventEnvelope,
    FixedBackoff,
    FnState,
    OperationRegistry,
    RetryPolicy,
    RunConfig,
    RunPhase,
    StateError,
    StateMeta,
    prepare_run,
    store_manifest,
)
from mfm_dist.config import EventProfileLevel, ExponentialBackoff, backoff_delay
from mfm_dist.errors import InvalidPlan, MfmError, NotFound, StorageError
from mfm_dist.events import (
    DomainEvent,
    RunCompleted,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import OpId, RunId
from mfm_dist.plan import ExecutionPlan, StateGraph
from mfm_dist.stores import InMemoryEventStore
from support.engine_helpers import GraphOp, Harness, registry_with


def setter(key: str, value: Any) -> FnState:
    def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set(key, value)

    return FnState(fn)


def chain_op(op_id: str = "chain") -> GraphOp:
    return GraphOp(
        op_id,
        {"a": setter("a", 1), "b": setter("b", 2), "c": setter("c", 3)},
        [("a", "b"), ("b", "c")],
    )


def events_of(h: Harness, run_id: str) -> list[EventEnvelope]:
    return h.events.read_range(run_id)  # type: ignore[arg-type]


# -- start ----------------------------------------------------------------------------------


def test_sequential_run_records_the_attempt_envelope() -> None:
    h = Harness(registry_with(chain_op()))
    result = h.run("chain", {})
    assert result.phase == RunPhase.COMPLETED
    assert h.kinds(result.run_id) == [
        "RunStarted",
        "StateEntered",
        "StateCompleted",
        "StateEntered",
        "StateCompleted",
        "StateEntered",
        "StateCompleted",
        "RunCompleted",
    ]
    envs = events_of(h, result.run_id)
    assert [e.seq for e in envs] == list(range(1, 9))
    # Each state's base is the previous state's snapshot; the final snapshot is the last one.
    entered = [e.event for e in envs if isinstance(e.event, StateEntered)]
    done = [e.event for e in envs if isinstance(e.event, StateCompleted)]
    assert entered[1].base_snapshot_id == done[0].context_snapshot_id
    assert entered[2].base_snapshot_id == done[1].context_snapshot_id
    assert result.final_snapshot_id == done[2].context_snapshot_id
    # Envelope attribution: attempt events carry state_id/attempt, run-level ones do not.
    assert envs[0].state_id is None and envs[-1].state_id is None
    assert envs[1].state_id == "chain.main.a" and envs[1].attempt == 0
    from mfm_dist.engine.snapshots import SnapshotStore

    final = SnapshotStore(h.artifacts).load(str(result.final_snapshot_id))
    assert final == {"input": {}, "a": 1, "b": 2, "c": 3}


def test_identical_content_gives_identical_snapshot_ids() -> None:
    h = Harness(registry_with(chain_op()))
    r1, r2 = h.run("chain", {}), h.run("chain", {})
    assert r1.run_id != r2.run_id
    assert r1.final_snapshot_id == r2.final_snapshot_id


def _prepare(h: Harness, target: str, cfg: RunConfig | None = None) -> Any:
    cfg = cfg or RunConfig()
    prepared = prepare_run(h.registry, target, {}, cfg)
    return cfg, prepared


@pytest.mark.parametrize(
    "mutate,code",
    [
        (lambda p, cfg: {"manifest_id": "0" * 64}, "manifest_id_mismatch"),
        (
            lambda p, cfg: {"run_config": RunConfig(retry_policy=RetryPolicy(max_attempts=3))},
            "run_config_mismatch",
        ),
        (
            lambda p, cfg: {"plan": ExecutionPlan(op_id=OpId("other"), graph=p.plan.graph)},
            "manifest_op_id_mismatch",
        ),
        (
            lambda p, cfg: {"plan": ExecutionPlan(op_id=OpId("chain"), graph=StateGraph())},
            "invalid_plan",
        ),
        (lambda p, cfg: {"initial_context": {"x": 1.5}}, "float_not_allowed"),
        (lambda p, cfg: {"initial_context": {"token": "Bearer abc"}}, "secrets_detected"),
    ],
)
def test_start_validates_before_writing(mutate: Any, code: str) -> None:
    h = Harness(registry_with(chain_op()))
    cfg, p = _prepare(h, "chain")
    store_manifest(h.artifacts, p.manifest)
    before = dict(h.artifacts._blobs)  # type: ignore[attr-defined]
    kwargs = dict(
        plan=p.plan,
        run_config=cfg,
        manifest=p.manifest,
        manifest_id=p.manifest_id,
        initial_context=p.initial_context,
    )
    kwargs.update(mutate(p, cfg))
    with pytest.raises(MfmError) as info:
        h.engine().start(**kwargs)
    assert info.value.code == code
    assert h.events.list_runs() == []
    assert dict(h.artifacts._blobs) == before  # type: ignore[attr-defined]


def test_start_requires_the_stored_manifest() -> None:
    h = Harness(registry_with(chain_op()))
    cfg, p = _prepare(h, "chain")
    args = dict(
        plan=p.plan,
        run_config=cfg,
        manifest=p.manifest,
        manifest_id=p.manifest_id,
        initial_context=p.initial_context,
    )
    with pytest.raises(NotFound) as info:
        h.engine().start(**args)
    assert info.value.code == "manifest_not_found"
    # A stored object that is not the manifest (a tampered store) is caught by the verified read.
    h.artifacts._blobs[str(p.manifest_id)] = ("Manifest", b'{"other":1}')  # type: ignore[attr-defined]
    with pytest.raises(MfmError) as info2:
        h.engine().start(**args)
    assert info2.value.code == "artifact_content_address_mismatch"
    assert h.events.list_runs() == []


def test_invalid_plan_leaves_no_events_and_no_snapshot() -> None:
    cyclic = GraphOp("cyclic", {"a": setter("a", 1), "b": setter("b", 1)}, [("a", "b"), ("b", "a")])
    h = Harness(registry_with(cyclic))
    with pytest.raises(InvalidPlan):
        h.run("cyclic", {})
    assert h.events.list_runs() == []
    assert h.artifacts._blobs == {}  # type: ignore[attr-defined]


# -- failures, retries and redaction --------------------------------------------------------


def test_retryable_error_is_retried_from_the_same_base() -> None:
    calls: list[int] = []

    def flaky(ctx, io, rec):  # type: ignore[no-untyped-def]
        calls.append(rec.attempt)
        if rec.attempt < 2:
            ctx.set("partial", rec.attempt)  # discarded with the failed attempt
            raise StateError("transient", "try again", retryable=True)
        ctx.set("ok", True)

    op = GraphOp("retry", {"a": setter("a", 1), "b": FnState(flaky)}, [("a", "b")])
    h = Harness(registry_with(op))
    cfg = RunConfig(
        retry_policy=RetryPolicy(
            max_attempts=3, backoff=FixedBackoff(delay=Duration.from_millis(5))
        )
    )
    result = h.run("retry", {}, cfg)
    assert result.phase == RunPhase.COMPLETED
    assert calls == [0, 1, 2]
    entered = [e.event for e in events_of(h, result.run_id) if isinstance(e.event, StateEntered)]
    b_attempts = [e for e in entered if e.state_id == "retry.main.b"]
    assert [e.attempt for e in b_attempts] == [0, 1, 2]
    assert len({e.base_snapshot_id for e in b_attempts}) == 1
    from mfm_dist.engine.snapshots import SnapshotStore

    final = SnapshotStore(h.artifacts).load(str(result.final_snapshot_id))
    assert "partial" not in final and final["ok"] is True


def test_non_retryable_error_fails_the_run_with_last_checkpoint() -> None:
    def boom(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("bad_input", "cannot continue", retryable=False)

    op = GraphOp(
        "fails",
        {"a": setter("a", 1), "b": FnState(boom), "c": setter("c", 1)},
        [("a", "b"), ("b", "c")],
    )
    h = Harness(registry_with(op))
    result = h.run("fails", {}, RunConfig(retry_policy=RetryPolicy(max_attempts=5)))
    assert result.phase == RunPhase.FAILED
    assert result.failed_state == "fails.main.b"
    assert result.error is not None and result.error.code == "bad_input"
    envs = events_of(h, result.run_id)
    completed_a = next(e.event for e in envs if isinstance(e.event, StateCompleted))
    last = envs[-1].event
    assert isinstance(last, RunCompleted) and last.status.value == "Failed"
    assert last.final_snapshot_id == completed_a.context_snapshot_id
    assert "fails.main.c" not in {str(e.state_id) for e in envs if e.state_id}


def test_retries_exhausted() -> None:
    def always(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("flaky", "nope", retryable=True)

    h = Harness(registry_with(GraphOp("ex", {"a": FnState(always)})))
    result = h.run("ex", {}, RunConfig(retry_policy=RetryPolicy(max_attempts=2)))
    assert result.phase == RunPhase.FAILED
    attempts = [
        e.event.attempt for e in events_of(h, result.run_id) if isinstance(e.event, StateEntered)
    ]
    assert attempts == [0, 1]


def test_backoff_delays() -> None:
    fixed = FixedBackoff(delay=Duration.from_millis(70))
    assert backoff_delay(fixed, 5).total_millis == 70
    exp = ExponentialBackoff(base=Duration.from_millis(100), max=Duration(secs=1))
    assert [backoff_delay(exp, a).total_millis for a in range(6)] == [
        100,
        200,
        400,
        800,
        1000,
        1000,
    ]
    assert RetryPolicy(max_attempts=0).allows_retry(0) is False
    assert RetryPolicy(max_attempts=1).allows_retry(0) is False
    assert RetryPolicy(max_attempts=2).allows_retry(0) is True
    assert RetryPolicy(max_attempts=2).allows_retry(1) is False


def test_handler_errors_are_redacted() -> None:
    def leaky(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("leak", "the password is hunter2", details={"api_key": "zzz"})

    def plain(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise ValueError("plain failure")

    h = Harness(
        registry_with(
            GraphOp("leak", {"a": FnState(leaky)}), GraphOp("plain", {"a": FnState(plain)})
        )
    )
    result = h.run("leak", {})
    failed = next(e.event for e in events_of(h, result.run_id) if isinstance(e.event, StateFailed))
    assert failed.error.message == "error details redacted"
    assert failed.error.details is None
    assert failed.failure_snapshot_id is None
    assert failed.state_id == "leak.main.a"
    result = h.run("plain", {})
    failed = next(e.event for e in events_of(h, result.run_id) if isinstance(e.event, StateFailed))
    assert failed.error.code == "handler_exception"
    assert failed.error.message == "ValueError: plain failure"


def test_context_writes_are_validated_in_the_handler() -> None:
    h = Harness(
        registry_with(
            GraphOp("f", {"a": setter("x", 0.5)}), GraphOp("s", {"a": setter("api_key", 1)})
        )
    )
    r1 = h.run("f", {})
    err = next(e.event.error for e in events_of(h, r1.run_id) if isinstance(e.event, StateFailed))
    assert r1.phase == RunPhase.FAILED and err.code == "float_not_allowed"
    r2 = h.run("s", {})
    err = next(e.event.error for e in events_of(h, r2.run_id) if isinstance(e.event, StateFailed))
    assert err.code == "secrets_detected"


# -- skip tags, profiles, domain events -----------------------------------------------------


def test_skip_tags_never_call_the_handler() -> None:
    called = threading.Event()

    def effect(ctx, io, rec):  # type: ignore[no-untyped-def]
        called.set()
        ctx.set("effect", 1)

    op = GraphOp(
        "dry",
        {
            "a": setter("a", 1),
            "pay": FnState(effect, StateMeta(tags=["apply_side_effect"])),
            "c": setter("c", 1),
        },
        [("a", "pay"), ("pay", "c")],
    )
    h = Harness(registry_with(op))
    result = h.run("dry", {}, RunConfig(skip_tags=["apply_side_effect"]))
    assert result.phase == RunPhase.COMPLETED and not called.is_set()
    envs = events_of(h, result.run_id)
    pay = [e for e in envs if e.state_id == "dry.main.pay"]
    assert [type(e.event).__name__ for e in pay] == ["StateEntered", "StateCompleted"]
    assert isinstance(pay[0].event, StateEntered) and isinstance(pay[1].event, StateCompleted)
    # The skipped state's snapshot is its base snapshot.
    assert pay[1].event.context_snapshot_id == pay[0].event.base_snapshot_id


def test_event_profiles() -> None:
    def emits(ctx, io, rec):  # type: ignore[no-untyped-def]

        async def go() -> None:
            await rec.emit("progress", {"step": 1})
            await io.record_value("seen", {"v": 1})

        return go()

    op = GraphOp("emit", {"a": FnState(emits)})
    h = Harness(registry_with(op))
    normal = h.run("emit", {})
    assert h.kinds(normal.run_id).count("progress") == 1
    minimal = h.run("emit", {}, RunConfig(event_profile=EventProfileLevel.MINIMAL))
    kinds = h.kinds(minimal.run_id)
    assert "progress" not in kinds and "fact_recorded" in kinds


def test_domain_events_must_be_canonical_and_secret_free() -> None:
    def bad(payload: Any) -> FnState:
        async def fn(ctx, io, rec):  # type: ignore[no-untyped-def]
            await rec.emit("x", payload)

        return FnState(fn)

    h = Harness(
        registry_with(
            GraphOp("f", {"a": bad({"v": 1.5})}), GraphOp("s", {"a": bad({"password": 1})})
        )
    )
    for op in ("f", "s"):
        result = h.run(op, {})
        err = next(
            e.event.error for e in events_of(h, result.run_id) if isinstance(e.event, StateFailed)
        )
        assert err.code == "domain_event_invalid"
        assert "x" not in h.kinds(result.run_id)


def test_large_domain_payloads_go_to_artifacts() -> None:
    async def big(ctx, io, rec):  # type: ignore[no-untyped-def]
        await rec.emit("big", {"blob": "y" * 100_000})

    h = Harness(registry_with(GraphOp("big", {"a": FnState(big)})))
    result = h.run("big", {})
    ev = next(e.event for e in events_of(h, result.run_id) if isinstance(e.event, DomainEvent))
    assert ev.payload is None and ev.payload_ref is not None
    from mfm_dist import get_json

    assert get_json(h.artifacts, ev.payload_ref) == {"blob": "y" * 100_000}


# -- resume ---------------------------------------------------------------------------------


class CrashOnce(InMemoryEventStore):
    """Fails the append of the first StateCompleted of `state_id`: a crash after the handler."""

    def __init__(self, state_id: str) -> None:
        super().__init__()
        self.state_id = state_id
        self.armed = True

    def append(self, run_id, expected_seq, envelopes):  # type: ignore[no-untyped-def]
        for env in envelopes:
            if (
                self.armed
                and isinstance(env.event, StateCompleted)
                and env.event.state_id == self.state_id
            ):
                self.armed = False
                raise StorageError("simulated_crash", "process died before the terminal event")
        return super().append(run_id, expected_seq, envelopes)


def test_orphan_recovery_and_idempotent_resume() -> None:
    calls: list[int] = []

    def counted(ctx, io, rec):  # type: ignore[no-untyped-def]
        calls.append(rec.attempt)
        ctx.set("b", "done")

    op = GraphOp(
        "orph",
        {"a": setter("a", 1), "b": FnState(counted), "c": setter("c", 1)},
        [("a", "b"), ("b", "c")],
    )
    h = Harness(registry_with(op), events=CrashOnce("orph.main.b"))
    with pytest.raises(StorageError):
        h.run("orph", {})
    run_id = h.events.list_runs()[0].run_id
    head_before = h.events.head_seq(run_id)
    result = h.engine().resume(run_id)
    assert result.phase == RunPhase.COMPLETED
    envs = events_of(h, run_id)
    b = [e for e in envs if e.state_id == "orph.main.b"]
    assert [e.event.attempt for e in b if isinstance(e.event, StateEntered)] == [0, 1]
    failures = [e.event for e in b if isinstance(e.event, StateFailed)]
    assert len(failures) == 1 and failures[0].error.code == "orphan_attempt_recovered"
    assert failures[0].error.retryable and failures[0].failure_snapshot_id is None
    # The retry starts from the same base snapshot.
    bases = {e.event.base_snapshot_id for e in b if isinstance(e.event, StateEntered)}
    assert len(bases) == 1
    assert calls == [0, 1]
    assert envs[head_before].event.__class__ is StateFailed  # recovery is the first thing appended
    # A second resume appends nothing and returns the same result.
    head = h.events.head_seq(run_id)
    again = h.engine().resume(run_id)
    assert again == result
    assert h.events.head_seq(run_id) == head


def test_resume_of_failed_run_is_idempotent() -> None:
    h = Harness(registry_with())
    failed = h.run("flaky_demo", {})
    head = h.events.head_seq(failed.run_id)
    again = h.engine().resume(failed.run_id)
    assert again.phase == RunPhase.FAILED and again.error == failed.error
    assert h.events.head_seq(failed.run_id) == head


def test_resume_unknown_run() -> None:
    h = Harness(registry_with())
    with pytest.raises(NotFound) as info:
        h.engine().resume(RunId("1b4e28ba-2fa1-41d2-883f-0e3b2f1b5b2a"))
    assert info.value.code == "run_not_found"


def test_resume_retries_a_failed_state_when_policy_allows() -> None:
    """A run that stopped after a retryable failure (crash during backoff) resumes the retry."""
    calls: list[int] = []

    def flaky(ctx, io, rec):  # type: ignore[no-untyped-def]
        calls.append(rec.attempt)
        if rec.attempt == 0:
            raise StateError("transient", "later", retryable=True)
        ctx.set("ok", 1)

    class CrashAfterFailure(InMemoryEventStore):
        armed = True

        def append(self, run_id, expected_seq, envelopes):  # type: ignore[no-untyped-def]
            super().append(run_id, expected_seq, envelopes)
            if self.armed and any(isinstance(e.event, StateFailed) for e in envelopes):
                self.armed = False
                raise StorageError("simulated_crash", "died during backoff")

    h = Harness(registry_with(GraphOp("rf", {"a": FnState(flaky)})), events=CrashAfterFailure())
    cfg = RunConfig(retry_policy=RetryPolicy(max_attempts=2))
    with pytest.raises(StorageError):
        h.run("rf", {}, cfg)
    run_id = h.events.list_runs()[0].run_id
    assert h.engine().resume(run_id).phase == RunPhase.COMPLETED
    assert calls == [0, 1]


# -- state timeouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "awaiting"])
def test_hung_handler_is_failed_by_its_timeout_and_retried(blocking: bool) -> None:
    from mfm_dist.events import StateFailed
    from support import dist_ops

    h = _dist_ops()
    dist_ops.LATE_RESULTS.clear()
    dist_ops.LATE_CALL[:] = [True]
    cfg = RunConfig(retry_policy=RetryPolicy(max_attempts=2))
    started = time.monotonic()
    result = h.run("hang_demo", {"timeout_ms": 200, "blocking": blocking}, cfg)
    assert time.monotonic() - started < 5
    assert result.phase == RunPhase.COMPLETED
    failed = [e for e in events_of(h, result.run_id) if isinstance(e.event, StateFailed)]
    assert len(failed) == 1 and failed[0].attempt == 0
    error = failed[0].event.error  # type: ignore[union-attr]
    assert (error.code, error.retryable) == ("state_timeout", True)
    if blocking:  # the abandoned handler goes on, but its late transport call is refused
        deadline = time.monotonic() + 5
        while not dist_ops.LATE_RESULTS and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dist_ops.LATE_RESULTS == ["state_timeout"]
        assert dist_ops.COUNTED == []
    dist_ops.LATE_CALL.clear()


def test_timeout_without_retries_fails_the_run_and_deployment_cap_applies() -> None:
    h = _dist_ops()
    # The state declares 60 s; the deployment caps every state at 150 ms.
    result = h.run("hang_demo", {"timeout_ms": 60_000}, max_state_timeout_ms=150)
    assert result.phase == RunPhase.FAILED
    assert result.error is not None and result.error.code == "state_timeout"


def test_run_config_state_timeout_is_the_default_for_states_without_one() -> None:
    import asyncio

    async def slow(ctx, io, rec):  # type: ignore[no-untyped-def]
        await asyncio.sleep(30)

    op = GraphOp("slow_default", {"a": FnState(slow)})
    h = Harness(registry_with(op))
    cfg = RunConfig(state_timeout=Duration.from_millis(100))
    started = time.monotonic()
    result = h.run("slow_default", {}, cfg)
    assert time.monotonic() - started < 5
    assert result.error is not None and result.error.code == "state_timeout"


def test_handler_cannot_fake_the_timeout_code() -> None:
    def liar(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("state_timeout", "not really", retryable=True)

    h = Harness(registry_with(GraphOp("liar", {"a": FnState(liar)})))
    result = h.run("liar", {})
    assert result.error is not None and result.error.code == "handler_reserved_code"


def test_timeouts_leave_manifest_ids_of_configs_without_them_unchanged() -> None:
    from mfm_dist.canonical import canonical_bytes

    plain = RunConfig()
    assert b"state_timeout" not in canonical_bytes(plain.model_dump(mode="json"))
    timed = RunConfig(state_timeout=Duration(secs=5))
    assert RunConfig.model_validate(timed.model_dump(mode="json")) == timed
    with pytest.raises(ValueError):
        RunConfig(state_timeout=Duration(secs=0))


class _DistOpsHarness(Harness):
    """The test operations of `dist_ops` with their `counting` transport."""

    def engine(self, **kwargs: Any) -> Any:
        kwargs.setdefault("io_factory", self.registry.io_factory())
        return super().engine(**kwargs)


def _dist_ops() -> Harness:
    reg = OperationRegistry()
    reg.load_module("support.dist_ops")
    return _DistOpsHarness(reg)
