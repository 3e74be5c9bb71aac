"""Backfills on a real local cluster (redis-server, SeaweedFS, Celery workers): the control
worker drives them with no client attached, through a kill of every worker, and cancels
them (docs/backfills.md)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mfm_dist.backfill.planner import load_state
from mfm_dist.backfill.state import PartStatus, Phase
from mfm_dist.cli.main import cli
from mfm_dist.engine.lifecycle import submission_of
from mfm_dist.results import RunPhase
from mfm_dist.stores.base import EventStore
from support.cluster import LocalCluster

pytestmark = pytest.mark.slow
OP = "partition_demo"
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("backfill-cluster")
    with LocalCluster(root, attempt_workers=2) as c:
        c.activate()
        yield c


@pytest.fixture(autouse=True)
def _cluster_environment(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process CLI reads the cluster's settings from the environment at its start."""
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)


def mfm(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def events() -> EventStore:
    from workers.runtime import get_runtime

    return get_runtime().events


def runs_of(name: str) -> Counter[str]:
    store = events()
    seen: Counter[str] = Counter()
    for summary in store.list_runs():
        record = submission_of(store.read_range(summary.run_id, 1, 2))
        if record is not None and record.labels.get("backfill") == name:
            seen[record.labels["partition"]] += 1
    return seen


def _explain(store: EventStore, name: str) -> list[object]:
    from mfm_dist.events import event_name

    out: list[object] = []
    for summary in store.list_runs():
        envs = store.read_range(summary.run_id)
        record = submission_of(envs[:2])
        if record is not None and record.labels.get("backfill") == name:
            out.append((summary.phase.value, [(e.ts_millis, event_name(e.event)) for e in envs]))
    out.append([(e.ts_millis, e.kind) for e in store.journal_read(f"backfill/{name}")])
    return out


def wait_for(check: object, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_backfill_survives_killing_every_worker(cluster: LocalCluster) -> None:
    name = "survivor"
    days = [f"d{i:02d}" for i in range(30)]
    made = mfm("backfill", "create", OP, "--name", name, "--partitions", ",".join(days),
               "--field", "day", "--input", '{"sleep_ms": 150}', "--max-active", "4",
               "--backend", "celery")  # fmt: skip
    assert made.exit_code == 0, made.output  # the CLI returns: nothing of it is needed now
    wait_for(lambda: len(load_state(events(), name).indices(PartStatus.COMPLETED)) >= 6,
             "some partitions to complete")  # fmt: skip
    state = load_state(events(), name)
    assert state.finished is None
    for worker in list(cluster.workers):
        cluster.stop_worker(worker, kill=True)
    time.sleep(2)  # leases of the killed attempts expire meanwhile
    cluster.start_worker("control", "control")
    for _ in range(2):
        cluster.start_worker("attempts")
    wait_for(lambda: load_state(events(), name).finished is not None, "the backfill to finish")
    state = load_state(events(), name)
    assert state.phase is Phase.COMPLETED, cluster.logs()
    assert state.counts()["completed"] == 30
    assert runs_of(name) == Counter(dict.fromkeys(days, 1))  # exactly one run per partition
    assert all(s.phase is RunPhase.COMPLETED for s in events().list_runs() if s.op_id == OP)
    status = mfm("backfill", "status", name, "--once")
    assert "backfill survivor: completed" in status.stdout
    assert "completed 30  running 0  pending 0  failed 0" in status.stdout


def test_cancel_on_the_cluster_ends_every_run(cluster: LocalCluster) -> None:
    name = "stopme"
    days = [f"c{i:02d}" for i in range(10)]
    made = mfm("backfill", "create", OP, "--name", name, "--partitions", ",".join(days),
               "--field", "day", "--input", '{"sleep_ms": 60000}', "--max-active", "3",
               "--backend", "celery")  # fmt: skip
    assert made.exit_code == 0, made.output
    store = events()
    wait_for(lambda: len(load_state(store, name).indices(PartStatus.CLAIMED)) == 3
             and len([r for r in runs_of(name)]) == 3, "three runs")  # fmt: skip
    # Two attempt workers: two partitions' attempts run, the third one's is queued.
    wait_for(lambda: len([s for s in store.list_runs() if s.op_id == OP and s.head_seq >= 3
                          and s.phase is RunPhase.RUNNING]) >= 2, "attempts to run")  # fmt: skip
    started = time.monotonic()
    result = mfm("backfill", "cancel", name, "--reason", "stop", "--timeout", "60")
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output + cluster.logs()
    state = load_state(store, name)
    assert state.phase is Phase.CANCELLED
    assert state.counts()["cancelled"] == 3 and state.counts()["not_started"] == 7, (
        state.counts(), _explain(store, name))
    mine = [s for s in store.list_runs() if s.op_id == OP and s.phase is not RunPhase.COMPLETED]
    assert len(mine) == 3 and all(s.phase is RunPhase.CANCELLED for s in mine)
    assert elapsed < 30
    time.sleep(1.5)
    assert runs_of(name) == Counter(dict.fromkeys(days[:3], 1))  # nothing new after the cancel


def test_unfinished_backfills_get_their_timer_back(cluster: LocalCluster, tmp_path: Path) -> None:
    from mfm_dist.stores.redis_keys import BACKFILL_TIMERS_KEY
    from workers.backfills import arm_unfinished, disarm, scheduled
    from workers.runtime import get_runtime

    rt = get_runtime()
    name = "rearmed"
    made = mfm("backfill", "create", OP, "--name", name, "--partitions", "x,y", "--field", "day",
               "--backend", "celery", "--detach")  # fmt: skip
    assert made.exit_code == 0
    assert mfm("backfill", "pause", name).exit_code == 0
    disarm(rt.redis, name)  # as if Redis had lost its last writes
    assert scheduled(rt.redis, name) is None
    assert arm_unfinished(rt) >= 1
    assert scheduled(rt.redis, name) is not None
    assert rt.redis.zscore(BACKFILL_TIMERS_KEY, "survivor") is None  # finished ones: none
    assert mfm("backfill", "resume", name).exit_code == 0
    wait_for(lambda: load_state(events(), name).finished is not None, "the resumed backfill")
    assert load_state(events(), name).counts()["completed"] == 2
