"""`ClusterView`, the one facade the CLI and the dashboard read the distributed backend
through (`mfm_dist/cluster_view.py`): found from the event store in force, None for embedded
stores; leases, the recorded plan, attempt holders, submission counts and queue depths come
from the cluster's own code over the store's Redis client."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mfm_dist.cli.app import App
from mfm_dist.cli.main import cli
from mfm_dist.cluster_view import ClusterView
from mfm_dist.settings import Settings
from mfm_dist.stores.memory import InMemoryEventStore
from mfm_dist.stores.redis_events import RedisEventStore
from mfm_dist.stores.redis_keys import HOLDERS, run_key
from mfm_dist.stores.sqlite import SqliteEventStore
from workers import submission_log
from workers.leases import HOLDERS_TTL_S, Coordination, holder_id
from workers.settings import ClusterSettings


def _no_settings() -> ClusterSettings:
    return ClusterSettings()


def test_embedded_stores_have_no_cluster(tmp_path: Path) -> None:
    assert ClusterView.of(InMemoryEventStore(), _no_settings) is None
    store = SqliteEventStore(tmp_path / "events.sqlite3")
    try:
        assert ClusterView.of(store, _no_settings) is None
    finally:
        store.close()
    app = App(home=str(tmp_path))
    try:
        assert app.cluster() is None
    finally:
        app.close()


def test_asking_embedded_stores_imports_no_redis(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from mfm_dist.cli.app import App\n"
        f"app = App(home={str(tmp_path)!r})\n"
        "assert app.cluster() is None\n"
        "assert 'redis' not in sys.modules and 'celery' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisEventStore]:
    events = RedisEventStore.from_url(redis_url)
    yield events
    events.close()


def test_the_redis_event_store_has_a_cluster(store: RedisEventStore) -> None:
    view = ClusterView.of(store, _no_settings)
    assert view is not None
    coord = Coordination(store.client)
    coord.record_plan("r1", "fp")
    lease = coord.acquire_lease("r1", "m.main.a", 2, 10_000)
    assert lease is not None
    assert view.recorded_plan("r1") == "fp" and view.recorded_plan("r2") is None
    leases = view.leases("r1", ["m.main.a", "m.main.b"])
    assert list(leases) == ["m.main.a"]
    assert leases["m.main.a"].attempt == 2 and leases["m.main.a"].worker
    # Taking the lease recorded who took it, in the same script (no round trip of its own).
    assert view.holders("r1") == {("m.main.a", 2): holder_id()}
    assert 0 < store.client.ttl(run_key("r1", HOLDERS)) <= HOLDERS_TTL_S
    store.client.hset(run_key("r1", HOLDERS), "m.main.a|2", "host:42")
    assert view.holders("r1") == {("m.main.a", 2): "host:42"}
    assert coord.acquire_lease("r1", "m.main.a", 2, 10_000) is None  # held: nothing recorded
    assert view.holders("r1") == {("m.main.a", 2): "host:42"}


def test_submission_counts_and_rejections(store: RedisEventStore) -> None:
    view = ClusterView.of(store, _no_settings)
    assert view is not None
    assert view.submission_counts() == {} and view.recent_rejections(5) == []
    submission_log.record(store.client, ["created", "existing"], [("operation_not_found", "d1")])
    assert view.submission_counts() == {
        "created": 1,
        "existing": 1,
        "rejected:operation_not_found": 1,
    }
    (row,) = view.recent_rejections(5)
    assert (row.code, row.delivery_id) == ("operation_not_found", "d1")


def test_queue_depths_need_a_broker(store: RedisEventStore) -> None:
    view = ClusterView.of(store, _no_settings)
    assert view is not None and view.queue_depths() is None
    with_broker = ClusterView.of(store, lambda: ClusterSettings(broker="memory://"))
    assert with_broker is not None and callable(with_broker.queue_depths())


def test_mfm_submissions_reads_the_cluster(redis_url: str, tmp_path: Path) -> None:
    client = RedisEventStore.from_url(redis_url)
    try:
        submission_log.record(client.client, ["created"], [("submission_invalid", None)])
    finally:
        client.close()
    runner = CliRunner()
    done = runner.invoke(cli, ["--events-url", redis_url, "submissions", "--rejected", "--json"])
    assert done.exit_code == 0, done.output
    payload = json.loads(done.output)
    assert payload["counts"] == {"created": 1, "rejected:submission_invalid": 1}
    assert [r["code"] for r in payload["rejected"]] == ["submission_invalid"]
    embedded = runner.invoke(cli, ["--home", str(tmp_path), "submissions"])
    assert embedded.exit_code != 0
    assert "error[distributed_unavailable]" in embedded.output


def test_the_app_asks_once_per_store(redis_url: str) -> None:
    app = App(events_url=redis_url, artifacts_url="memory://", settings=Settings())
    try:
        first = app.cluster()
        assert first is not None and app.cluster() is first
    finally:
        app.close()
