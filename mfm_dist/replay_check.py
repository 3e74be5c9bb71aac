"""`replay_run`: re-execute a recorded run against its facts and compare every snapshot.

A replay is a *verification*, not a new run: it is never stored. Each completed
state is re-run at its recorded attempt number, from its recorded base snapshot,
with `ReplayIo` over the run's fact bindings (no transport is ever built, so no
network and no external program is touched), and the snapshot it produces is
compared with the recorded one. New snapshots go to an in-memory overlay; the
original stores are only read, so the original history is never altered.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.config import IoMode
from mfm_dist.engine.attempt import Append, AttemptEnv, run_attempt
from mfm_dist.engine.lifecycle import load_run
from mfm_dist.engine.merge import json_equal
from mfm_dist.engine.snapshots import SnapshotStore
from mfm_dist.events import EventDraft, EventEnvelope
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.io.base import FactIndex, IoFactory
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.memory import InMemoryArtifactStore


class StateReplay(BaseModel):
    model_config = ConfigDict(frozen=True)

    state_id: str
    attempt: int
    recorded_snapshot_id: str
    replayed_snapshot_id: str | None = None
    match: bool
    first_differing_key: str | None = None
    error_code: str | None = None
    missing_fact_key: str | None = None


class ReplayReport(BaseModel):
    run_id: str
    ok: bool
    states: list[StateReplay] = Field(default_factory=list)
    not_replayed: list[str] = Field(default_factory=list)
    """States whose last recorded attempt did not complete (nothing to compare)."""

    @property
    def first_divergence(self) -> StateReplay | None:
        return next((s for s in self.states if not s.match), None)


class OverlayArtifactStore(InMemoryArtifactStore):
    """Reads through to `base`; writes stay in memory. The base store is never written."""

    def __init__(self, base: ArtifactStore) -> None:
        super().__init__()
        self._base = base
        self.url = base.url

    def exists(self, artifact_id: str) -> bool:
        return super().exists(artifact_id) or self._base.exists(artifact_id)

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        if super().exists(artifact_id):
            return super().get_raw(artifact_id)
        # Raw, like every backend: `get` verifies content addresses, and a snapshot link's
        # reader verifies what it rebuilds (docs/storage.md#snapshot-links).
        return self._base.get_keyed(artifact_id)


def _discard(run_id: RunId) -> Append:
    """An `append` that numbers events but keeps none: a replay records nothing."""
    seq = 0

    def append(drafts: Sequence[EventDraft]) -> list[EventEnvelope]:
        nonlocal seq
        out = []
        for draft in drafts:
            seq += 1
            out.append(draft.at(run_id, seq))
        return out

    return append


def replay_run(
    events: EventStore,
    artifacts: ArtifactStore,
    registry: OperationRegistry,
    run_id: str,
    io_factory: IoFactory | None = None,
) -> ReplayReport:
    """Replay every completed state of `run_id` and report per-state snapshot matches."""
    if io_factory is None:
        from mfm_dist.io.factory import default_io_factory

        io_factory = default_io_factory()
    loaded = load_run(events, artifacts, registry, RunId(run_id))
    history = loaded.history
    plan = loaded.plan.compiled
    config = loaded.manifest.run_config.model_copy(update={"io_mode": IoMode.REPLAY})
    overlay = OverlayArtifactStore(artifacts)
    snapshots = SnapshotStore(overlay)
    env = AttemptEnv(
        run_id=history.run_id,
        run_config=config,
        artifacts=overlay,
        snapshots=snapshots,
        facts=FactIndex(history.facts),
        io_factory=io_factory,
        append=_discard(history.run_id),
    )
    report = ReplayReport(run_id=str(history.run_id), ok=True)
    for state_id in plan.order:
        record = history.states.get(str(state_id))
        if record is None or record.last is None:
            continue
        last = record.last
        if last.outcome != "completed" or last.snapshot_id is None:
            report.not_replayed.append(str(state_id))
            continue
        base = snapshots.load(last.base_snapshot_id)
        outcome = run_attempt(
            env,
            state_id,
            plan.states[plan.position[str(state_id)]],
            last.attempt,
            last.base_snapshot_id,
            base,
        )
        if outcome.completed and outcome.snapshot_id == last.snapshot_id:
            report.states.append(
                StateReplay(
                    state_id=str(state_id),
                    attempt=last.attempt,
                    recorded_snapshot_id=last.snapshot_id,
                    replayed_snapshot_id=outcome.snapshot_id,
                    match=True,
                )
            )
            continue
        report.ok = False
        if outcome.completed and outcome.snapshot_id is not None:
            differing = _first_differing_key(
                snapshots.load(last.snapshot_id), snapshots.load(outcome.snapshot_id)
            )
            report.states.append(
                StateReplay(
                    state_id=str(state_id),
                    attempt=last.attempt,
                    recorded_snapshot_id=last.snapshot_id,
                    replayed_snapshot_id=outcome.snapshot_id,
                    match=False,
                    first_differing_key=differing,
                )
            )
            continue
        cause = outcome.cause or outcome.error
        missing = None
        if cause is not None and cause.code == "missing_fact" and isinstance(cause.details, dict):
            key = cause.details.get("key")  # already redacted by MissingFact when secret-shaped
            missing = key if isinstance(key, str) else None
        cause = outcome.error  # report the persisted (redacted) form of the error
        report.states.append(
            StateReplay(
                state_id=str(state_id),
                attempt=last.attempt,
                recorded_snapshot_id=last.snapshot_id,
                match=False,
                error_code=cause.code if cause is not None else None,
                missing_fact_key=missing,
            )
        )
    return report


def _first_differing_key(recorded: dict[str, object], replayed: dict[str, object]) -> str | None:
    for key in sorted(set(recorded) | set(replayed)):
        if (
            key not in recorded
            or key not in replayed
            or not json_equal(recorded[key], replayed[key])
        ):
            return key
    return None
