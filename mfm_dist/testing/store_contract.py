"""The store contract as a reusable test suite: every backend of `EventStore` and
`ArtifactStore` must pass it (docs/storage.md, docs/guards.md, docs/events.md).

To test a backend of your own, subclass the contract in a pytest test module and provide the
store as a fixture (requires pytest)::

    from mfm_dist.testing import ArtifactStoreContract, EventStoreContract

    class TestMyEvents(EventStoreContract):
        @pytest.fixture
        def event_store(self) -> Iterator[EventStore]:
            store = MyEventStore(...)      # an empty store
            yield store
            store.close()

    class TestMyArtifacts(ArtifactStoreContract):
        @pytest.fixture
        def artifact_store(self, tmp_path: Path) -> ArtifactStore:
            return MyArtifactStore(tmp_path)

        def tamper(self, store: ArtifactStore, artifact_id: str, data: bytes) -> None:
            ...  # overwrite the stored bytes behind the store's back

The project runs it against its own backends in `tests/stores/test_store_contract.py`
(memory, SQLite, Redis; memory, files, S3 on real servers).
"""

from __future__ import annotations

import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mfm_dist.artifacts import ArtifactKind, ArtifactStore, OtherArtifactKind, get_json, put_json
from mfm_dist.errors import (
    ConcurrencyError,
    Corruption,
    ErrorCategory,
    ErrorInfo,
    InvalidId,
    InvalidInput,
    NotFound,
    StorageError,
)
from mfm_dist.events import (
    RUN_CANCEL_REQUESTED,
    DomainEvent,
    EventDraft,
    EventEnvelope,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, OpId, RunId, StateId
from mfm_dist.journal import JournalDraft, JournalRecord, RecordCodec
from mfm_dist.results import RunPhase, RunQuery
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.guards import GuardViolation

SNAP = ArtifactId("a" * 64)


MANIFEST = ArtifactId("b" * 64)


A = StateId("m.main.a")


B = StateId("m.main.b")


def d_started(ts: int = 1_000, op: str = "demo") -> EventDraft:
    event = RunStarted(op_id=OpId(op), manifest_id=MANIFEST, initial_snapshot_id=SNAP)
    return EventDraft(event=event, ts_millis=ts)


def d_entered(state: StateId, attempt: int, *, as_state: StateId | None = None) -> EventDraft:
    event = StateEntered(state_id=state, attempt=attempt, base_snapshot_id=SNAP)
    return EventDraft(event=event, ts_millis=2_000, state_id=as_state or state, attempt=attempt)


def d_completed(state: StateId, attempt: int) -> EventDraft:
    event = StateCompleted(state_id=state, context_snapshot_id=SNAP)
    return EventDraft(event=event, ts_millis=3_000, state_id=state, attempt=attempt)


def d_failed(state: StateId, attempt: int) -> EventDraft:
    error = ErrorInfo(code="boom", category=ErrorCategory.UNKNOWN, message="boom")
    event = StateFailed(state_id=state, error=error, failure_snapshot_id=None)
    return EventDraft(event=event, ts_millis=3_000, state_id=state, attempt=attempt)


def d_domain(state: StateId | None = None, attempt: int | None = None, n: int = 1) -> EventDraft:
    event = DomainEvent(name="note", payload={"n": n})
    return EventDraft(event=event, ts_millis=2_500, state_id=state, attempt=attempt)


K1, K2 = "mfm:now_millis|run:r|state:a|attempt:0|ord:0", "price of coffee"


OTHER = ArtifactId("c" * 64)


def d_fact(
    key: str, payload_id: str, state: StateId | None = None, attempt: int | None = None
) -> EventDraft:
    payload = {"key": key, "payload_id": payload_id, "meta": {}}
    event = DomainEvent(name="fact_recorded", payload=payload)
    return EventDraft(event=event, ts_millis=2_600, state_id=state, attempt=attempt)


def d_raw_fact(
    payload: Any, *, payload_ref: ArtifactId | None = None, state: StateId | None = None
) -> EventDraft:
    """A `fact_recorded` event with an arbitrary (usually malformed) payload."""
    event = DomainEvent(name="fact_recorded", payload=payload, payload_ref=payload_ref)
    return EventDraft(event=event, ts_millis=2_600, state_id=state, attempt=0 if state else None)


def d_cancel(reason: str = "stop") -> EventDraft:
    event = DomainEvent(name=RUN_CANCEL_REQUESTED, payload={"reason": reason})
    return EventDraft(event=event, ts_millis=4_000)


def d_run_completed(status: RunStatus = RunStatus.COMPLETED) -> EventDraft:
    return EventDraft(event=RunCompleted(status=status, final_snapshot_id=SNAP), ts_millis=9_000)


def at(run_id: RunId, head: int, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
    return [d.at(run_id, head + i) for i, d in enumerate(drafts, start=1)]


def write(store: EventStore, run_id: RunId, drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
    """Append positionally at the current head."""
    envelopes = at(run_id, store.head_seq(run_id), drafts)
    store.append(run_id, store.head_seq(run_id), envelopes)
    return envelopes


GUARD_CASES: list[tuple[str, list[EventDraft], list[EventDraft], str]] = [
    ("second_run_started", [d_started()], [d_started()], "run_started_not_first"),
    ("entered_before_started", [], [d_entered(A, 0)], "run_not_started"),
    ("domain_before_started", [], [d_domain()], "run_not_started"),
    (
        "entered_while_open",
        [d_started(), d_entered(A, 0)],
        [d_entered(A, 1)],
        "attempt_already_open",
    ),
    (
        "reentered_same_attempt",
        [d_started(), d_entered(A, 0)],
        [d_entered(A, 0)],
        "attempt_already_open",
    ),
    ("first_attempt_not_zero", [d_started()], [d_entered(A, 1)], "attempt_out_of_order"),
    (
        "attempt_reused",
        [d_started(), d_entered(A, 0), d_failed(A, 0)],
        [d_entered(A, 0)],
        "attempt_out_of_order",
    ),
    (
        "attempt_skipped",
        [d_started(), d_entered(A, 0), d_failed(A, 0)],
        [d_entered(A, 2)],
        "attempt_out_of_order",
    ),
    ("terminal_never_entered", [d_started()], [d_completed(A, 0)], "terminal_without_open_attempt"),
    (
        "second_terminal",
        [d_started(), d_entered(A, 0), d_failed(A, 0)],
        [d_completed(A, 0)],
        "terminal_without_open_attempt",
    ),
    (
        "failed_of_other_state",
        [d_started(), d_entered(A, 0)],
        [d_failed(B, 0)],
        "terminal_without_open_attempt",
    ),
    ("domain_without_attempt", [d_started()], [d_domain(A, 0)], "domain_event_outside_attempt"),
    (
        "domain_wrong_attempt",
        [d_started(), d_entered(A, 0)],
        [d_domain(A, 1)],
        "domain_event_outside_attempt",
    ),
    (
        "domain_after_terminal",
        [d_started(), d_entered(A, 0), d_completed(A, 0)],
        [d_domain(A, 0)],
        "domain_event_outside_attempt",
    ),
    (
        "entered_misattributed",
        [d_started()],
        [d_entered(A, 0, as_state=B)],
        "envelope_attribution_mismatch",
    ),
    (
        "entered_unattributed",
        [d_started()],
        [EventDraft(event=StateEntered(state_id=A, attempt=0, base_snapshot_id=SNAP), ts_millis=1)],
        "envelope_attribution_mismatch",
    ),
    (
        "terminal_unattributed",
        [d_started(), d_entered(A, 0)],
        [EventDraft(event=StateCompleted(state_id=A, context_snapshot_id=SNAP), ts_millis=1)],
        "envelope_attribution_mismatch",
    ),
    (
        "run_started_attributed",
        [],
        [d_started().model_copy(update={"state_id": A, "attempt": 0})],
        "envelope_attribution_mismatch",
    ),
    (
        "run_started_with_attempt_only",
        [],
        [d_started().model_copy(update={"attempt": 0})],
        "envelope_attribution_mismatch",
    ),
    (
        "run_completed_attributed",
        [d_started()],
        [d_run_completed().model_copy(update={"state_id": A})],
        "envelope_attribution_mismatch",
    ),
    (
        "domain_attempt_without_state",
        [d_started(), d_entered(A, 0)],
        [d_domain(None, 0)],
        "envelope_attribution_mismatch",
    ),
    (
        "domain_state_without_attempt",
        [d_started()],
        [d_domain(A, None)],
        "domain_event_outside_attempt",
    ),
    (
        "terminal_misattributed",
        [d_started(), d_entered(A, 0)],
        [d_completed(A, 1)],
        "envelope_attribution_mismatch",
    ),
    (
        "completed_with_open_attempt",
        [d_started(), d_entered(A, 0)],
        [d_run_completed()],
        "run_completed_with_open_attempt",
    ),
    (
        "completed_twice",
        [d_started(), d_run_completed()],
        [d_run_completed()],
        "after_run_completed",
    ),
    (
        "entered_after_completed",
        [d_started(), d_run_completed()],
        [d_entered(A, 0)],
        "after_run_completed",
    ),
    (
        "domain_after_completed",
        [d_started(), d_run_completed(RunStatus.FAILED)],
        [d_domain()],
        "after_run_completed",
    ),
    (
        "started_after_completed",
        [d_started(), d_run_completed()],
        [d_started()],
        "after_run_completed",
    ),
    # A state completes at most once per run.
    (
        "reentered_after_completion",
        [d_started(), d_entered(A, 0), d_completed(A, 0)],
        [d_entered(A, 1)],
        "state_already_completed",
    ),
    (
        "duplicate_entered_after_completion",
        [d_started(), d_entered(A, 0), d_completed(A, 0)],
        [d_entered(A, 0)],
        "state_already_completed",
    ),
    (
        "reentered_after_retry_completed",
        [d_started(), d_entered(A, 0), d_failed(A, 0), d_entered(A, 1), d_completed(A, 1)],
        [d_entered(A, 2)],
        "state_already_completed",
    ),
    (
        "reentered_after_completion_in_batch",
        [d_started()],
        [d_entered(A, 0), d_completed(A, 0), d_entered(A, 1)],
        "state_already_completed",
    ),
    (
        "completed_state_misattributed_reentry",
        [d_started(), d_entered(A, 0), d_completed(A, 0)],
        [d_entered(A, 1, as_state=B)],
        "state_already_completed",
    ),
    # Fact keys are single assignment per run.
    (
        "fact_conflict_with_history",
        [d_started(), d_entered(A, 0), d_fact(K1, SNAP, A, 0)],
        [d_fact(K1, OTHER, A, 0)],
        "fact_conflict",
    ),
    (
        "fact_conflict_across_attempts",
        [d_started(), d_entered(A, 0), d_fact(K1, SNAP, A, 0), d_failed(A, 0), d_entered(A, 1)],
        [d_fact(K1, OTHER, A, 1)],
        "fact_conflict",
    ),
    (
        "fact_conflict_across_states",
        [d_started(), d_entered(A, 0), d_entered(B, 0), d_fact(K2, SNAP, A, 0)],
        [d_fact(K2, OTHER, B, 0)],
        "fact_conflict",
    ),
    (
        "fact_conflict_in_batch",
        [d_started(), d_entered(A, 0)],
        [d_fact(K1, SNAP, A, 0), d_domain(A, 0), d_fact(K1, OTHER, A, 0)],
        "fact_conflict",
    ),
    (
        "fact_conflict_run_level",
        [d_started(), d_fact(K1, SNAP)],
        [d_fact(K1, OTHER)],
        "fact_conflict",
    ),
    (
        "fact_conflict_after_idempotent_rebind",
        [d_started(), d_fact(K1, SNAP)],
        [d_fact(K1, SNAP), d_fact(K1, OTHER)],
        "fact_conflict",
    ),
    (
        "fact_outside_attempt_checked_first",
        [d_started(), d_fact(K1, SNAP)],
        [d_fact(K1, OTHER, A, 0)],
        "domain_event_outside_attempt",
    ),
    (
        "malformed_fact_outside_attempt",
        [d_started()],
        [d_raw_fact(None, state=A)],
        "domain_event_outside_attempt",
    ),
    (
        "fact_after_run_completed",
        [d_started(), d_run_completed()],
        [d_fact(K1, SNAP)],
        "after_run_completed",
    ),
    ("fact_payload_null", [d_started()], [d_raw_fact(None)], "fact_malformed"),
    ("fact_payload_list", [d_started()], [d_raw_fact([K1, str(SNAP)])], "fact_malformed"),
    ("fact_payload_string", [d_started()], [d_raw_fact(K1)], "fact_malformed"),
    (
        "fact_key_missing",
        [d_started()],
        [d_raw_fact({"payload_id": SNAP, "meta": {}})],
        "fact_malformed",
    ),
    (
        "fact_key_not_string",
        [d_started()],
        [d_raw_fact({"key": 7, "payload_id": SNAP, "meta": {}})],
        "fact_malformed",
    ),
    (
        "fact_payload_id_missing",
        [d_started()],
        [d_raw_fact({"key": K1, "meta": {}})],
        "fact_malformed",
    ),
    (
        "fact_payload_id_not_string",
        [d_started()],
        [d_raw_fact({"key": K1, "payload_id": 5, "meta": {}})],
        "fact_malformed",
    ),
    (
        "fact_payload_id_not_an_artifact_id",
        [d_started()],
        [d_raw_fact({"key": K1, "payload_id": "A" * 64, "meta": {}})],
        "fact_malformed",
    ),
    (
        "fact_payload_id_with_newline",
        [d_started()],
        [d_raw_fact({"key": K1, "payload_id": "a" * 64 + "\n", "meta": {}})],
        "fact_malformed",
    ),
    (
        "fact_meta_not_object",
        [d_started()],
        [d_raw_fact({"key": K1, "payload_id": SNAP, "meta": []})],
        "fact_malformed",
    ),
    (
        "fact_extra_field",
        [d_started()],
        [d_raw_fact({"key": K1, "payload_id": SNAP, "meta": {}, "x": 1})],
        "fact_malformed",
    ),
    (
        "fact_payload_by_reference",
        [d_started()],
        [d_raw_fact(None, payload_ref=SNAP)],
        "fact_malformed",
    ),
    (
        "malformed_fact_after_valid_ones",
        [d_started()],
        [d_fact(K1, SNAP), d_raw_fact({"key": K2})],
        "fact_malformed",
    ),
    # cancellation (docs/cancellation.md)
    (
        "second_cancel_request",
        [d_started(), d_cancel()],
        [d_cancel("again")],
        "cancel_already_requested",
    ),
    (
        "two_cancel_requests_in_one_batch",
        [d_started()],
        [d_cancel(), d_cancel("again")],
        "cancel_already_requested",
    ),
    ("entered_after_cancel", [d_started(), d_cancel()], [d_entered(A, 0)], "run_cancel_requested"),
    (
        "entered_after_cancel_in_one_batch",
        [d_started()],
        [d_cancel(), d_entered(A, 0)],
        "run_cancel_requested",
    ),
    (
        "completed_after_cancel",
        [d_started(), d_cancel()],
        [d_run_completed()],
        "run_cancel_requested",
    ),
    (
        "failed_after_cancel",
        [d_started(), d_cancel()],
        [d_run_completed(RunStatus.FAILED)],
        "run_cancel_requested",
    ),
    (
        "cancelled_without_request",
        [d_started()],
        [d_run_completed(RunStatus.CANCELLED)],
        "cancel_not_requested",
    ),
    (
        "cancel_after_run_completed",
        [d_started(), d_run_completed()],
        [d_cancel()],
        "after_run_completed",
    ),
]


JOURNAL = "backfill/nightly-2026"


def j_draft(kind: str = "note", n: int = 1, ts: int = 5_000) -> JournalDraft:
    return JournalDraft(kind=kind, body={"n": n, "items": [n, "x"]}, ts_millis=ts)


def d_submitted(labels: Any, ts: int = 1_000, state: StateId | None = None) -> EventDraft:
    """A `run_submitted` record as `record_run_start` writes it (seq 2 with RunStarted)."""
    payload = {"fingerprint": "f" * 64, "idempotency_key": None, "labels": labels,
               "on_complete": None, "submitted_ms": ts}  # fmt: skip
    event = DomainEvent(name="run_submitted", payload=payload)
    return EventDraft(event=event, ts_millis=ts, state_id=state, attempt=0 if state else None)


def d_completed_at(ts: int, status: RunStatus = RunStatus.COMPLETED) -> EventDraft:
    return EventDraft(event=RunCompleted(status=status, final_snapshot_id=SNAP), ts_millis=ts)


def _fleet(store: EventStore) -> dict[str, RunId]:
    """Seven runs over three ops, three phases, two backfills and four start times."""
    runs = {name: RunId.mint() for name in ("a1", "a2", "a3", "b1", "b2", "c1", "c2")}
    plan = [  # name, started, op, labels, final status (None: still running)
        ("a1", 1_000, "alpha", {"backfill": "jan", "part": "01"}, RunStatus.COMPLETED),
        ("a2", 2_000, "alpha", {"backfill": "jan", "part": "02"}, RunStatus.FAILED),
        ("a3", 3_000, "alpha", {"backfill": "feb", "part": "01"}, None),
        ("b1", 4_000, "beta", {"backfill": "jan", "part": "03"}, RunStatus.COMPLETED),
        ("b2", 4_000, "beta", {}, RunStatus.FAILED),
        ("c1", 5_000, "gamma", {"team": "ml"}, None),
        ("c2", 6_000, "gamma", None, RunStatus.COMPLETED),  # no submission record at all
    ]
    for name, started, op, labels, status in plan:
        drafts = [d_started(ts=started, op=op)]
        if labels is not None:
            drafts.append(d_submitted(labels, ts=started))
        store.append_next(runs[name], drafts)
        if status is not None:
            store.append_next(runs[name], [d_completed_at(started + 100, status)])
    return runs


class EventStoreContract:
    """The event store contract: sequences, guards, facts, listing and journals.

    Subclasses provide the fixture `event_store`, yielding an empty store."""

    def test_empty_run_has_head_zero(self, event_store: EventStore) -> None:
        run = RunId.mint()
        assert event_store.head_seq(run) == 0
        assert event_store.read_range(run) == []
        assert event_store.list_runs() == []

    def test_seqs_are_one_indexed_and_contiguous(self, event_store: EventStore) -> None:
        run = RunId.mint()
        first = at(run, 0, [d_started()])
        event_store.append(run, 0, first)
        assert event_store.head_seq(run) == 1
        rest = at(run, 1, [d_entered(A, 0), d_domain(A, 0), d_completed(A, 0)])
        event_store.append(run, 1, rest)
        assert event_store.head_seq(run) == 4
        stored = event_store.read_range(run)
        assert [e.seq for e in stored] == [1, 2, 3, 4]
        assert stored == first + rest
        assert stored[2].event == DomainEvent(name="note", payload={"n": 1})
        assert stored[2].state_id == A and stored[2].attempt == 0

    def test_runs_are_independent(self, event_store: EventStore) -> None:
        one, two = RunId.mint(), RunId.mint()
        write(event_store, one, [d_started(), d_entered(A, 0)])
        write(event_store, two, [d_started()])
        assert event_store.head_seq(one) == 2
        assert event_store.head_seq(two) == 1
        assert all(e.run_id == two for e in event_store.read_range(two))
        # Guard state is per run: A is open in `one`, not in `two`.
        write(event_store, two, [d_entered(A, 0)])

    @pytest.mark.parametrize("expected", [0, 2, 5])
    def test_expected_seq_mismatch_writes_nothing(
        self, event_store: EventStore, expected: int
    ) -> None:
        run = RunId.mint()
        write(event_store, run, [d_started()])
        before = event_store.read_range(run)
        with pytest.raises(ConcurrencyError) as caught:
            event_store.append(run, expected, at(run, expected, [d_entered(A, 0)]))
        assert caught.value.code == "expected_seq_mismatch"
        assert caught.value.info.details == {"expected_seq": expected, "head_seq": 1}
        assert event_store.head_seq(run) == 1
        assert event_store.read_range(run) == before

    def test_expected_seq_mismatch_on_empty_batch(self, event_store: EventStore) -> None:
        run = RunId.mint()
        event_store.append(run, 0, [])
        assert event_store.head_seq(run) == 0
        with pytest.raises(ConcurrencyError):
            event_store.append(run, 3, [])

    def test_envelopes_must_continue_the_head(self, event_store: EventStore) -> None:
        run = RunId.mint()
        write(event_store, run, [d_started()])
        wrong_seq = at(run, 2, [d_entered(A, 0)])  # seq 3 at head 1
        with pytest.raises(ConcurrencyError) as caught:
            event_store.append(run, 1, wrong_seq)
        assert caught.value.code == "envelope_position_invalid"
        other_run = at(RunId.mint(), 1, [d_entered(A, 0)])
        with pytest.raises(ConcurrencyError) as caught:
            event_store.append(run, 1, other_run)
        assert caught.value.code == "envelope_position_invalid"
        assert event_store.head_seq(run) == 1

    def test_batch_is_all_or_nothing(self, event_store: EventStore) -> None:
        run = RunId.mint()
        write(event_store, run, [d_started()])
        before = event_store.read_range(run)
        summary_before = event_store.list_runs()
        batch = at(run, 1, [d_entered(A, 0), d_domain(A, 0), d_entered(A, 0)])
        with pytest.raises(GuardViolation) as caught:
            event_store.append(run, 1, batch)
        assert caught.value.rule == "attempt_already_open"
        assert caught.value.info.details["seq"] == 4
        assert event_store.head_seq(run) == 1
        assert event_store.read_range(run) == before
        assert event_store.list_runs() == summary_before
        # The rejected batch left no guard state behind: attempt 0 of A is still the next one.
        write(event_store, run, [d_entered(A, 0)])
        assert event_store.head_seq(run) == 2

    def test_rejected_batch_does_not_complete_the_run(self, event_store: EventStore) -> None:
        run = RunId.mint()
        write(event_store, run, [d_started()])
        batch = at(run, 1, [d_entered(A, 0), d_completed(A, 0), d_run_completed(), d_domain()])
        with pytest.raises(GuardViolation) as caught:
            event_store.append(run, 1, batch)
        assert caught.value.rule == "after_run_completed"
        assert event_store.head_seq(run) == 1
        [summary] = event_store.list_runs()
        assert summary.phase is RunPhase.RUNNING and summary.head_seq == 1
        write(event_store, run, [d_entered(A, 0), d_completed(A, 0)])
        write(event_store, run, [d_run_completed()])
        assert event_store.list_runs()[0].phase is RunPhase.COMPLETED

    @pytest.mark.parametrize("mode", ["append", "append_next"])
    @pytest.mark.parametrize(
        ("setup", "bad", "rule"),
        [pytest.param(s, b, r, id=name) for name, s, b, r in GUARD_CASES],
    )
    def test_guard_rejects(
        self,
        event_store: EventStore,
        mode: str,
        setup: list[EventDraft],
        bad: list[EventDraft],
        rule: str,
    ) -> None:
        run = RunId.mint()
        if setup:
            event_store.append_next(run, setup)
        before = event_store.read_range(run)
        head = len(before)
        with pytest.raises(GuardViolation) as caught:
            if mode == "append":
                event_store.append(run, head, at(run, head, bad))
            else:
                event_store.append_next(run, bad)
        err = caught.value
        assert isinstance(err, StorageError)
        assert err.rule == rule
        assert err.code == "envelope_guard_violation"
        assert err.info.details == {"rule": rule, "seq": head + len(bad)}
        assert event_store.head_seq(run) == head
        assert event_store.read_range(run) == before
        # Nothing of the rejected batch is bound: the stored bindings are exactly the history's.
        for key in (K1, K2):
            assert event_store.fact_binding(run, key) == EventStore.fact_binding(
                event_store, run, key
            )

    def test_guard_messages_never_echo_fact_keys_or_payloads(self, event_store: EventStore) -> None:
        run = RunId.mint()
        event_store.append_next(run, [d_started(), d_fact(K2, SNAP)])
        for bad in ([d_fact(K2, OTHER)], [d_raw_fact({"key": K2, "payload_id": 3})]):
            with pytest.raises(GuardViolation) as caught:
                event_store.append_next(run, bad)
            text = str(caught.value) + repr(caught.value.info)
            assert "coffee" not in text and "c" * 64 not in text and "a" * 64 not in text

    def test_guard_accepts_a_valid_parallel_history(self, event_store: EventStore) -> None:
        run = RunId.mint()
        history = [
            d_started(),
            d_domain(),  # run-level domain events are allowed while the run is open
            d_entered(A, 0),
            d_entered(B, 0),  # fan-out: attempts of different states interleave
            d_domain(B, 0),
            d_domain(A, 0),
            d_fact(K1, SNAP, B, 0),  # a fact binding inside an attempt
            d_failed(A, 0),
            d_completed(B, 0),
            d_entered(A, 1),  # retry: the next attempt number
            d_domain(A, 1),
            d_fact(K1, SNAP, A, 1),  # re-recording the same binding is idempotent
            d_fact(K2, OTHER),  # run-level binding
            d_completed(A, 1),
            d_run_completed(),
        ]
        for i, draft in enumerate(history):
            if i % 2:
                event_store.append_next(run, [draft])
            else:
                write(event_store, run, [draft])
        assert [e.seq for e in event_store.read_range(run)] == list(range(1, len(history) + 1))

    def test_cancel_lets_open_attempts_close_and_ends_cancelled(
        self, event_store: EventStore
    ) -> None:
        """After the request, running attempts may still finish or fail; nothing new enters;
        a state-level event named like the request is an ordinary domain event."""
        run = RunId.mint()
        state_level = EventDraft(
            event=DomainEvent(name=RUN_CANCEL_REQUESTED, payload={"reason": "x"}),
            ts_millis=2_100,
            state_id=A,
            attempt=0,
        )
        event_store.append_next(
            run, [d_started(), d_entered(A, 0), d_entered(B, 0), state_level, d_cancel()]
        )
        event_store.append_next(run, [d_completed(A, 0)])
        event_store.append_next(run, [d_failed(B, 0)])
        with pytest.raises(GuardViolation) as caught:
            event_store.append_next(run, [d_entered(B, 1)])
        assert caught.value.rule == "run_cancel_requested"
        event_store.append_next(run, [d_run_completed(RunStatus.CANCELLED)])
        assert event_store.head_seq(run) == 8
        [summary] = [r for r in event_store.list_runs() if r.run_id == run]
        assert summary.phase == RunPhase.CANCELLED

    def test_state_completes_once_and_other_states_are_unaffected(
        self, event_store: EventStore
    ) -> None:
        run = RunId.mint()
        event_store.append_next(run, [d_started(), d_entered(A, 0), d_failed(A, 0)])
        # Failed attempts never complete a state: retries go on until one completes.
        event_store.append_next(run, [d_entered(A, 1), d_failed(A, 1), d_entered(A, 2)])
        event_store.append_next(run, [d_completed(A, 2), d_entered(B, 0), d_completed(B, 0)])
        for attempt in (0, 2, 3, 4):
            with pytest.raises(GuardViolation) as caught:
                event_store.append_next(run, [d_entered(A, attempt)])
            assert caught.value.rule == "state_already_completed"
        with pytest.raises(GuardViolation) as caught:
            event_store.append_next(run, [d_entered(B, 1)])
        assert caught.value.rule == "state_already_completed"
        # A duplicate terminal for the completed attempt is still caught by the envelope rule.
        with pytest.raises(GuardViolation) as caught:
            event_store.append_next(run, [d_completed(A, 2)])
        assert caught.value.rule == "terminal_without_open_attempt"
        other = StateId("m.main.c")
        event_store.append_next(run, [d_entered(other, 0), d_completed(other, 0)])
        event_store.append_next(run, [d_run_completed()])
        history = event_store.read_range(run)
        completions = [e.event.state_id for e in history if isinstance(e.event, StateCompleted)]
        assert sorted(completions) == sorted([A, B, other])

    def test_fact_bindings_are_single_assignment_and_readable(
        self, event_store: EventStore
    ) -> None:
        run, other_run = RunId.mint(), RunId.mint()
        assert event_store.fact_binding(run, K1) is None  # unknown run
        event_store.append_next(run, [d_started(), d_entered(A, 0)])
        event_store.append_next(other_run, [d_started(), d_fact(K1, OTHER)])
        assert event_store.fact_binding(run, K1) is None
        # Bind, and re-record the same binding (idempotent) in the same batch and later.
        event_store.append_next(run, [d_fact(K1, SNAP, A, 0), d_fact(K1, SNAP, A, 0)])
        write(event_store, run, [d_fact(K1, SNAP, A, 0), d_failed(A, 0), d_entered(A, 1)])
        event_store.append_next(run, [d_fact(K1, SNAP, A, 1), d_fact(K2, OTHER, A, 1)])
        # A rejected batch binds nothing, even keys it bound before the violating event.
        fresh = "fresh key"
        with pytest.raises(GuardViolation) as caught:
            event_store.append_next(run, [d_fact(fresh, SNAP, A, 1), d_fact(K1, OTHER, A, 1)])
        assert caught.value.rule == "fact_conflict"
        assert event_store.fact_binding(run, fresh) is None
        event_store.append_next(run, [d_fact(fresh, OTHER)])  # run-level facts bind too

        expected = {K1: SNAP, K2: OTHER, fresh: OTHER, "never bound": None}
        for key, payload_id in expected.items():
            found = event_store.fact_binding(run, key)
            assert found == payload_id
            assert found is None or isinstance(found, ArtifactId)
            # The ABC's default (a history scan) agrees with the backend's indexed lookup.
            assert EventStore.fact_binding(event_store, run, key) == payload_id
        assert event_store.fact_binding(other_run, K1) == OTHER  # bindings are per run
        assert event_store.fact_binding(other_run, K2) is None
        event_store.append_next(run, [d_completed(A, 1), d_run_completed()])
        assert event_store.fact_binding(run, K2) == OTHER

    def test_concurrent_conflicting_bindings_have_one_winner(self, event_store: EventStore) -> None:
        run = RunId.mint()
        states = [StateId(f"m.main.s{i}") for i in range(8)]
        event_store.append_next(run, [d_started(), *(d_entered(s, 0) for s in states)])
        payloads = [ArtifactId(f"{i:x}" * 64) for i in range(len(states))]
        barrier = threading.Barrier(len(states))

        def bind(index: int) -> bool:
            barrier.wait()
            try:
                event_store.append_next(run, [d_fact(K1, payloads[index], states[index], 0)])
            except GuardViolation as exc:
                assert exc.rule == "fact_conflict"
                return False
            return True

        with ThreadPoolExecutor(len(states)) as pool:
            won = list(pool.map(bind, range(len(states))))
        assert won.count(True) == 1
        assert event_store.fact_binding(run, K1) == payloads[won.index(True)]

    def test_guard_tracks_state_within_one_batch(self, event_store: EventStore) -> None:
        run = RunId.mint()
        drafts = [
            d_started(),
            d_entered(A, 0),
            d_failed(A, 0),
            d_entered(A, 1),
            d_completed(A, 1),
            d_run_completed(),
        ]
        event_store.append(run, 0, at(run, 0, drafts))
        assert event_store.head_seq(run) == len(drafts)

    def test_append_next_assigns_seqs_and_returns_envelopes(self, event_store: EventStore) -> None:
        run = RunId.mint()
        first = event_store.append_next(run, [d_started()])
        assert [e.seq for e in first] == [1]
        drafts = [d_entered(A, 0), d_domain(A, 0, n=7)]
        envelopes = event_store.append_next(run, drafts)
        assert [e.seq for e in envelopes] == [2, 3]
        assert all(e.run_id == run for e in envelopes)
        assert [e.event for e in envelopes] == [d.event for d in drafts]
        assert envelopes[1].state_id == A and envelopes[1].attempt == 0
        assert envelopes[1].ts_millis == drafts[1].ts_millis
        assert event_store.read_range(run) == first + envelopes
        assert event_store.append_next(run, []) == []
        assert event_store.head_seq(run) == 3

    def test_concurrent_append_next_is_contiguous(self, event_store: EventStore) -> None:
        run = RunId.mint()
        event_store.append_next(run, [d_started()])
        states = [StateId(f"m.main.s{i}") for i in range(8)]
        barrier = threading.Barrier(len(states))

        def attempt(state: StateId) -> list[int]:
            barrier.wait()
            seqs: list[int] = []
            for draft in (d_entered(state, 0), d_domain(state, 0), d_completed(state, 0)):
                seqs += [e.seq for e in event_store.append_next(run, [draft])]
            return seqs

        with ThreadPoolExecutor(len(states)) as pool:
            returned = list(pool.map(attempt, states))
        stored = event_store.read_range(run)
        assert [e.seq for e in stored] == list(range(1, 2 + 3 * len(states)))
        assert sorted(s for seqs in returned for s in seqs) == list(range(2, 2 + 3 * len(states)))
        for state, seqs in zip(states, returned, strict=True):
            assert seqs == sorted(seqs)
            kinds = [type(stored[s - 1].event) for s in seqs]
            assert kinds == [StateEntered, DomainEvent, StateCompleted]
            assert all(stored[s - 1].state_id == state for s in seqs)
        event_store.append_next(run, [d_run_completed()])

    def test_concurrent_positional_appends_have_one_winner(self, event_store: EventStore) -> None:
        run = RunId.mint()
        event_store.append_next(run, [d_started()])
        states = [StateId(f"m.main.s{i}") for i in range(8)]
        barrier = threading.Barrier(len(states))

        def attempt(state: StateId) -> bool:
            barrier.wait()
            try:
                event_store.append(run, 1, at(run, 1, [d_entered(state, 0)]))
            except ConcurrencyError:
                return False
            return True

        with ThreadPoolExecutor(len(states)) as pool:
            won = list(pool.map(attempt, states))
        assert won.count(True) == 1
        assert event_store.head_seq(run) == 2

    def test_read_range_bounds(self, event_store: EventStore) -> None:
        run = RunId.mint()
        write(event_store, run, [d_started(), d_domain(n=2), d_domain(n=3), d_domain(n=4)])

        def seqs(lo: int, hi: int | None = None) -> list[int]:
            return [e.seq for e in event_store.read_range(run, lo, hi)]

        assert seqs(1) == [1, 2, 3, 4]
        assert seqs(2, 3) == [2, 3]
        assert seqs(3, 3) == [3]
        assert seqs(0, 2) == [1, 2]
        assert seqs(3, 99) == [3, 4]
        assert seqs(5) == []
        assert seqs(3, 2) == []
        assert event_store.read_range(RunId.mint(), 1, 10) == []

    def test_list_runs_newest_first_with_phase_and_head(self, event_store: EventStore) -> None:
        old, mid, new = RunId.mint(), RunId.mint(), RunId.mint()
        write(event_store, mid, [d_started(ts=2_000, op="beta")])
        write(event_store, old, [d_started(ts=1_000, op="alpha"), d_entered(A, 0)])
        write(event_store, new, [d_started(ts=3_000, op="gamma")])
        runs = event_store.list_runs()
        assert [r.run_id for r in runs] == [new, mid, old]
        assert [r.op_id for r in runs] == ["gamma", "beta", "alpha"]
        assert [r.started_ms for r in runs] == [3_000, 2_000, 1_000]
        assert [r.head_seq for r in runs] == [1, 1, 2]
        assert all(r.phase is RunPhase.RUNNING for r in runs)

        write(event_store, old, [d_completed(A, 0), d_run_completed(RunStatus.COMPLETED)])
        event_store.append_next(mid, [d_run_completed(RunStatus.FAILED)])
        by_id = {r.run_id: r for r in event_store.list_runs()}
        assert by_id[old].phase is RunPhase.COMPLETED and by_id[old].head_seq == 4
        assert by_id[mid].phase is RunPhase.FAILED and by_id[mid].head_seq == 2
        assert by_id[new].phase is RunPhase.RUNNING
        assert [r.run_id for r in event_store.list_runs(limit=2)] == [new, mid]

    def test_run_summaries_look_up_runs_by_id(self, event_store: EventStore) -> None:
        a, b, missing = RunId.mint(), RunId.mint(), RunId.mint()
        write(event_store, a, [d_started(ts=1_000, op="alpha")])
        write(event_store, b, [d_started(ts=2_000, op="beta"), d_run_completed(RunStatus.FAILED)])
        rows = event_store.run_summaries([a, b, missing, a])
        assert set(rows) == {str(a), str(b)}
        assert rows[str(a)].phase is RunPhase.RUNNING and rows[str(a)].op_id == "alpha"
        assert rows[str(b)].phase is RunPhase.FAILED and rows[str(b)].head_seq == 2
        assert event_store.run_summaries([]) == {}
        many = [RunId.mint() for _ in range(1_200)]  # more than one chunk of any backend
        assert event_store.run_summaries([*many, b]).keys() == {str(b)}

    def test_journal_appends_are_guarded_and_contiguous(self, event_store: EventStore) -> None:
        assert event_store.journal_head(JOURNAL) == 0
        assert event_store.journal_read(JOURNAL) == []
        first = event_store.journal_append(JOURNAL, 0, [j_draft(n=1), j_draft("other", 2)])
        assert [(e.seq, e.kind) for e in first] == [(1, "note"), (2, "other")]
        assert event_store.journal_head(JOURNAL) == 2
        with pytest.raises(ConcurrencyError) as stale:
            event_store.journal_append(JOURNAL, 1, [j_draft(n=9)])
        assert stale.value.code == "expected_seq_mismatch"
        assert stale.value.info.details == {"expected_seq": 1, "head_seq": 2}
        assert event_store.journal_head(JOURNAL) == 2  # nothing of the refused batch
        assert event_store.journal_append(JOURNAL, 2, []) == []
        with pytest.raises(ConcurrencyError):
            event_store.journal_append(JOURNAL, 0, [])  # an empty batch is checked too
        event_store.journal_append(JOURNAL, 2, [j_draft(n=3, ts=6_000)])
        stored = event_store.journal_read(JOURNAL)
        assert [e.seq for e in stored] == [1, 2, 3]
        assert stored[0].body == {"n": 1, "items": [1, "x"]} and stored[0].journal == JOURNAL
        assert stored[:2] == first
        assert [e.seq for e in event_store.journal_read(JOURNAL, 2, 2)] == [2]
        assert [e.seq for e in event_store.journal_read(JOURNAL, 0, 99)] == [1, 2, 3]
        assert event_store.journal_read(JOURNAL, 3, 2) == []

    def test_journals_are_independent_of_runs_and_of_each_other(
        self, event_store: EventStore
    ) -> None:
        run = RunId.mint()
        write(event_store, run, [d_started()])
        event_store.journal_append(JOURNAL, 0, [j_draft()])
        event_store.journal_append("backfill/other", 0, [j_draft(), j_draft()])
        assert event_store.head_seq(run) == 1
        assert event_store.journal_head(JOURNAL) == 1
        assert event_store.journal_head("backfill/other") == 2
        assert [r.run_id for r in event_store.list_runs()] == [run]  # journals are not runs

    def test_concurrent_journal_appends_have_one_winner(self, event_store: EventStore) -> None:
        event_store.journal_append(JOURNAL, 0, [j_draft()])
        barrier = threading.Barrier(8)

        def attempt(n: int) -> bool:
            barrier.wait()
            try:
                event_store.journal_append(JOURNAL, 1, [j_draft(n=n), j_draft(n=n)])
            except ConcurrencyError:
                return False
            return True

        with ThreadPoolExecutor(8) as pool:
            won = list(pool.map(attempt, range(8)))
        assert won.count(True) == 1
        stored = event_store.journal_read(JOURNAL)
        assert [e.seq for e in stored] == [1, 2, 3]
        assert stored[1].body == stored[2].body  # one writer's whole batch

    def test_list_journals_by_namespace(self, event_store: EventStore) -> None:
        assert event_store.list_journals("backfill") == []
        event_store.journal_append("backfill/a", 0, [j_draft(ts=1_000), j_draft(ts=1_500)])
        event_store.journal_append("backfill/b", 0, [j_draft(ts=2_000)])
        event_store.journal_append("backfillx/c", 0, [j_draft(ts=3_000)])
        rows = event_store.list_journals("backfill")
        assert [r.journal for r in rows] == ["backfill/b", "backfill/a"]
        assert [r.name for r in rows] == ["b", "a"]
        assert (rows[1].head_seq, rows[1].created_ms, rows[1].updated_ms) == (2, 1_000, 1_500)
        assert [r.journal for r in event_store.list_journals("backfillx")] == ["backfillx/c"]

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "nonamespace",
            "Backfill/x",
            "backfill/",
            "backfill/-x",
            "backfill/a b",
            "backfill/" + "x" * 129,
        ],
    )
    def test_journal_ids_are_validated(self, event_store: EventStore, bad: str) -> None:
        for call in (
            lambda: event_store.journal_head(bad),
            lambda: event_store.journal_read(bad),
            lambda: event_store.journal_append(bad, 0, [j_draft()]),
        ):
            with pytest.raises(InvalidInput) as err:
                call()
            assert err.value.code == "invalid_journal_id"

    def test_typed_records_round_trip_and_undecodable_ones_are_corruption(
        self,
        event_store: EventStore,
    ) -> None:
        class Note(JournalRecord):
            KIND = "note"
            n: int
            items: list[Any]

        codec: RecordCodec[JournalRecord] = RecordCodec(Note)
        event_store.journal_append(JOURNAL, 0, [codec.draft(Note(n=4, items=[]), 7)])
        event_store.journal_append(
            JOURNAL, 1, [JournalDraft(kind="note", body={"n": "x"}, ts_millis=8)]
        )
        event_store.journal_append(JOURNAL, 2, [JournalDraft(kind="nope", body=None, ts_millis=9)])
        entries = event_store.journal_read(JOURNAL)
        assert codec.decode(entries[0]) == Note(n=4, items=[])
        for bad in entries[1:]:
            with pytest.raises(Corruption) as err:
                codec.decode(bad)
            assert err.value.code == "journal_record_invalid"

    def test_list_runs_labels_and_end_time_come_from_the_run_log(
        self, event_store: EventStore
    ) -> None:
        labelled, plain = RunId.mint(), RunId.mint()
        event_store.append_next(
            labelled, [d_started(ts=1_000), d_submitted({"team": "data", "backfill": "jan"})]
        )
        write(event_store, plain, [d_started(ts=2_000)])
        by_id = {r.run_id: r for r in event_store.list_runs()}
        assert by_id[labelled].labels == {"backfill": "jan", "team": "data"}
        assert list(by_id[labelled].labels) == ["backfill", "team"]  # sorted by key
        assert by_id[plain].labels == {}
        assert by_id[labelled].ended_ms is None and by_id[labelled].duration_ms is None

        write(event_store, labelled, [d_completed_at(4_500)])
        event_store.append_next(plain, [d_completed_at(2_250, RunStatus.FAILED)])
        by_id = {r.run_id: r for r in event_store.list_runs()}
        assert (by_id[labelled].ended_ms, by_id[labelled].duration_ms) == (4_500, 3_500)
        assert (by_id[plain].ended_ms, by_id[plain].duration_ms) == (2_250, 250)
        assert by_id[labelled].labels == {"backfill": "jan", "team": "data"}

    def test_only_the_seq_2_submission_record_labels_a_run(self, event_store: EventStore) -> None:
        late, attributed, invalid = RunId.mint(), RunId.mint(), RunId.mint()
        event_store.append_next(late, [d_started(), d_domain(), d_submitted({"team": "x"})])
        event_store.append_next(attributed, [d_started(), d_entered(A, 0)])
        event_store.append_next(attributed, [d_submitted({"team": "x"}, state=A)])
        event_store.append_next(invalid, [d_started(), d_submitted({"Team": "x", "k": "v"})])
        assert {str(r.run_id): r.labels for r in event_store.list_runs()} == {
            late: {},
            attributed: {},
            invalid: {},
        }
        assert event_store.list_runs(query=RunQuery(labels={"team": "x"})) == []

    def test_list_runs_filters_alone_and_combined(self, event_store: EventStore) -> None:
        runs = _fleet(event_store)

        def names(query: RunQuery, limit: int | None = None) -> list[str]:
            by_id = {v: k for k, v in runs.items()}
            return [by_id[r.run_id] for r in event_store.list_runs(limit=limit, query=query)]

        b_first = ["b2", "b1"] if runs["b2"] > runs["b1"] else ["b1", "b2"]  # same start: by id
        assert names(RunQuery()) == ["c2", "c1", *b_first, "a3", "a2", "a1"]
        assert names(RunQuery(op_id="alpha")) == ["a3", "a2", "a1"]
        assert names(RunQuery(op_id="delta")) == []
        assert names(RunQuery(phase=RunPhase.FAILED)) == ["b2", "a2"]
        assert names(RunQuery(phase=RunPhase.RUNNING)) == ["c1", "a3"]
        assert names(RunQuery(phase=RunPhase.COMPLETED)) == ["c2", "b1", "a1"]
        assert names(RunQuery(labels={"backfill": "jan"})) == ["b1", "a2", "a1"]
        assert names(RunQuery(labels={"part": "01"})) == ["a3", "a1"]
        assert names(RunQuery(labels={"backfill": "jan", "part": "01"})) == ["a1"]
        assert names(RunQuery(labels={"backfill": "jan", "part": "04"})) == []
        assert names(RunQuery(since_ms=4_000)) == ["c2", "c1", *b_first]
        assert names(RunQuery(until_ms=4_000)) == ["a3", "a2", "a1"]
        assert names(RunQuery(since_ms=2_000, until_ms=5_000)) == [*b_first, "a3", "a2"]
        assert names(RunQuery(op_id="alpha", phase=RunPhase.COMPLETED)) == ["a1"]
        assert names(RunQuery(op_id="alpha", labels={"backfill": "jan"}, since_ms=1_500)) == ["a2"]
        assert names(RunQuery(phase=RunPhase.COMPLETED, labels={"backfill": "jan"})) == ["b1", "a1"]
        assert names(RunQuery(op_id="beta", phase=RunPhase.FAILED, until_ms=4_001)) == ["b2"]
        assert names(RunQuery(labels={"backfill": "jan"}), limit=2) == ["b1", "a2"]
        assert names(RunQuery(), limit=1) == ["c2"]
        # A run that completes moves from one phase to the other in every index.
        event_store.append_next(runs["c1"], [d_completed_at(5_500, RunStatus.FAILED)])
        assert names(RunQuery(phase=RunPhase.RUNNING)) == ["a3"]
        assert names(RunQuery(phase=RunPhase.FAILED, labels={"team": "ml"})) == ["c1"]
        [c1] = event_store.list_runs(query=RunQuery(labels={"team": "ml"}))
        assert (c1.ended_ms, c1.duration_ms, c1.op_id) == (5_500, 500, "gamma")

    def test_runs_with_prefix_is_an_ordered_range(self, event_store: EventStore) -> None:
        ids = [
            RunId("abcdef01-0000-4000-8000-000000000002"),
            RunId("abcdef01-0000-4000-8000-000000000001"),
            RunId("abcdef02-0000-4000-8000-000000000001"),
            RunId("abcdef0f-0000-4000-8000-000000000001"),
            RunId("abcdef10-0000-4000-8000-000000000001"),
        ]
        for rid in ids:
            event_store.append_next(rid, [d_started()])
        assert event_store.runs_with_prefix("abcdef01") == sorted(ids[:2])
        assert event_store.runs_with_prefix("abcdef01-0000-4000-8000-000000000001") == [ids[1]]
        assert event_store.runs_with_prefix("abcdef0") == sorted(ids[:4])
        assert event_store.runs_with_prefix("abcdef0", limit=3) == sorted(ids[:4])[:3]
        assert event_store.runs_with_prefix("abcdef") == sorted(ids)
        assert event_store.runs_with_prefix("abcdef03") == []
        assert event_store.runs_with_prefix("bbbbbbbb") == []


class ArtifactStoreContract(ABC):
    """The artifact store contract: content addressing, verification on read, idempotent and
    concurrent puts, prefix listing.

    Subclasses provide the fixture `artifact_store` (an empty store) and `tamper`."""

    @abstractmethod
    def tamper(self, store: ArtifactStore, artifact_id: str, data: bytes) -> None:
        """Overwrite the bytes stored for `artifact_id` behind the store's back (so that
        corruption detection is tested through the backend's own storage)."""

    def test_put_get_exists(self, artifact_store: ArtifactStore) -> None:
        store = artifact_store
        data = b"hello artifact"
        expected = hashlib.sha256(data).hexdigest()
        assert not store.exists(expected)
        artifact_id = store.put(ArtifactKind.OUTPUT, data)
        assert artifact_id == expected
        assert isinstance(artifact_id, ArtifactId)
        assert store.exists(artifact_id)
        assert store.get(artifact_id) == data

    def test_ids_with_prefix_lists_one_shard(self, artifact_store: ArtifactStore) -> None:
        store = artifact_store
        ids = sorted(store.put(ArtifactKind.OUTPUT, f"blob {i}".encode()) for i in range(40))
        one = max(ids, key=lambda i: sum(j[0] == i[0] for j in ids))  # shares its first digit
        assert store.ids_with_prefix(one[:8]) == [one]
        assert store.ids_with_prefix(one[:12]) == [one]
        assert store.ids_with_prefix(one) == [one]
        first_char = [i for i in ids if i[0] == one[0]]
        assert len(first_char) > 1
        assert store.ids_with_prefix(one[0], limit=100) == first_char
        assert store.ids_with_prefix(one[0], limit=1) == first_char[:1]
        shard = [i for i in ids if i[:2] == one[:2]]
        assert store.ids_with_prefix(one[:2], limit=100) == shard
        taken = {i[:8] for i in ids}
        absent = next(p for p in (f"{n:08x}" for n in range(99)) if p not in taken)
        assert store.ids_with_prefix(absent) == []
        assert store.ids_with_prefix("not hex!") == []

    def test_empty_artifact(self, artifact_store: ArtifactStore) -> None:
        store = artifact_store
        artifact_id = store.put(ArtifactKind.OUTPUT, b"")
        assert artifact_id == hashlib.sha256(b"").hexdigest()
        assert store.get(artifact_id) == b""

    def test_put_is_idempotent_and_kind_never_changes_the_id(
        self, artifact_store: ArtifactStore
    ) -> None:
        store = artifact_store
        data = b'{"k":1}'
        first = store.put(ArtifactKind.FACT_PAYLOAD, data)
        assert store.put(ArtifactKind.FACT_PAYLOAD, data) == first
        assert store.put(ArtifactKind.MANIFEST, data) == first
        assert store.put(OtherArtifactKind(value="custom"), data) == first
        assert store.get(first) == data

    def test_get_missing_is_not_found(self, artifact_store: ArtifactStore) -> None:
        missing = hashlib.sha256(b"never stored").hexdigest()
        with pytest.raises(NotFound) as caught:
            artifact_store.get(missing)
        assert caught.value.code == "artifact_not_found"
        assert not artifact_store.exists(missing)

    def test_get_with_invalid_id_is_rejected(self, artifact_store: ArtifactStore) -> None:
        with pytest.raises(InvalidId):
            artifact_store.get("../../etc/passwd")
        assert not artifact_store.exists("../not-an-id")

    def test_tampered_bytes_are_corruption(self, artifact_store: ArtifactStore) -> None:
        store = artifact_store
        artifact_id = store.put(ArtifactKind.CONTEXT_SNAPSHOT, b'{"a":1}')
        self.tamper(artifact_store, artifact_id, b'{"a":2}')
        with pytest.raises(Corruption) as caught:
            store.get(artifact_id)
        assert caught.value.code == "artifact_content_address_mismatch"

    def test_json_roundtrip(self, artifact_store: ArtifactStore) -> None:
        store = artifact_store
        value: Any = {"b": [1, 2, {"c": None}], "a": "x", "t": True}
        artifact_id = put_json(store, ArtifactKind.CONTEXT_SNAPSHOT, value, "snapshot")
        assert store.get(artifact_id) == b'{"a":"x","b":[1,2,{"c":null}],"t":true}'
        assert get_json(store, artifact_id) == value

    @pytest.mark.parametrize(
        ("raw", "code"),
        [
            (b'{"b":1,"a":2}', "artifact_not_canonical"),
            (b'{"a": 2}', "artifact_not_canonical"),
            (b'{"a":1.5}', "artifact_float_not_allowed"),
            (b'{"a":1.0}', "artifact_float_not_allowed"),
            (b'{"password":"x"}', "secrets_detected"),
            (b'{"note":"my api_key is here"}', "secrets_detected"),
            (b"not json", "artifact_json_decode_failed"),
            (b'{"a":', "artifact_json_decode_failed"),
        ],
    )
    def test_get_json_rejects_bad_bytes(
        self, artifact_store: ArtifactStore, raw: bytes, code: str
    ) -> None:
        artifact_id = artifact_store.put(ArtifactKind.FACT_PAYLOAD, raw)
        with pytest.raises(Corruption) as caught:
            get_json(artifact_store, artifact_id, "fact")
        assert caught.value.code == code

    def test_concurrent_puts_of_the_same_bytes_all_succeed(
        self, artifact_store: ArtifactStore
    ) -> None:
        store = artifact_store
        data = os.urandom(64 * 1024)
        expected = hashlib.sha256(data).hexdigest()
        barrier = threading.Barrier(32)

        def put(_: int) -> str:
            barrier.wait()
            return store.put(ArtifactKind.OUTPUT, data)

        with ThreadPoolExecutor(32) as pool:
            ids = list(pool.map(put, range(32)))
        assert ids == [expected] * 32
        assert store.get(expected) == data
