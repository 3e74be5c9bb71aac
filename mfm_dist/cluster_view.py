"""`ClusterView`: what the CLI, the dashboard and a takeover read from the distributed
backend, in one place (docs/dashboard.md, docs/distributed.md).

The read commands, `mfm resume` and the dashboard need a few things only the cluster knows —
live attempt leases, whether a run was submitted to a cluster, which worker ran which
attempt, the submission counters, the broker's queue depths. They ask this facade; it finds
the Redis client behind the event store in force (`of`) and calls the cluster's own code
(`workers.leases`, `workers.metrics`, `workers.submission_log`), so no command reaches into
a store for its client or spells a key. Importing this module imports neither Redis nor
Celery: the embedded stores never need them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mfm_dist.engine.history import RunHistory
from mfm_dist.errors import InvalidInput
from mfm_dist.ids import RunId
from mfm_dist.stores.base import EventStore
from mfm_dist.stores.urls import REDIS_SCHEMES

if TYPE_CHECKING:
    from workers.leases import Coordination, LeaseInfo
    from workers.settings import ClusterSettings
    from workers.submission_log import Rejection


class ClusterView:
    """The distributed backend, as the CLI, the dashboard and `mfm_dist.resume` see it:
    read-only, over the Redis the event store uses. `settings` builds the cluster's settings
    (read by the CLI at its start) when something needs the broker (None: nothing does)."""

    def __init__(self, client: Any, settings: Callable[[], ClusterSettings] | None = None) -> None:
        from workers.leases import Coordination

        self._client = client
        self._settings = settings
        self._coordination: Coordination = Coordination(client)

    @classmethod
    def of(
        cls, events: EventStore, settings: Callable[[], ClusterSettings] | None = None
    ) -> ClusterView | None:
        """The cluster behind `events`: None unless they are the Redis event store and the
        distributed backend is installed. An embedded store is told by its URL, before
        anything Redis-specific is imported."""
        if urlsplit(events.url).scheme not in REDIS_SCHEMES:
            return None
        from mfm_dist.stores.redis_events import RedisEventStore

        if not isinstance(events, RedisEventStore):
            return None
        try:
            return cls(events.client, settings)
        except ImportError:
            return None

    # -- runs ------------------------------------------------------------------------------------
    def leases(self, run_id: str, state_ids: Iterable[str]) -> dict[str, LeaseInfo]:
        """state → (attempt, worker, expiry) of every live lease among `state_ids`."""
        return self._coordination.lease_info(run_id, state_ids)

    def recorded_plan(self, run_id: str) -> str | None:
        """The plan fingerprint recorded when the run was submitted to the cluster (None: the
        run was not submitted to a cluster, or it has finished and was forgotten)."""
        return self._coordination.recorded_plan(run_id)

    def holders(self, run_id: str) -> dict[tuple[str, int], str]:
        """(state, attempt) → `host:pid` of every attempt whose lease a worker took."""
        from workers.metrics import read_holders

        return read_holders(self._client, run_id)

    # -- submissions -----------------------------------------------------------------------------
    def submission_counts(self) -> dict[str, int]:
        """Submissions by outcome (`created`, `existing`, `rejected:<code>`)."""
        from workers import submission_log

        return submission_log.counts(self._client)

    def recent_rejections(self, limit: int) -> list[Rejection]:
        """The newest rejected submissions (code, time, delivery id; never a payload)."""
        from workers import submission_log

        return submission_log.recent_rejections(self._client, limit)

    # -- the broker ------------------------------------------------------------------------------
    def queue_depths(self) -> Callable[[], dict[str, int]] | None:
        """Messages waiting in each of the cluster's queues, asked at each call through a
        Celery app built from the settings (None: no broker configured, or Celery missing)."""
        try:
            from workers.factory import create_app
            from workers.metrics import broker_queue_depths
        except ImportError:
            return None
        settings = self._settings() if self._settings is not None else None
        if settings is None or settings.broker is None:
            return None
        celery_app = create_app(settings)

        def depths() -> dict[str, int]:
            names = [q.name for q in celery_app.conf.task_queues or ()]
            return broker_queue_depths(celery_app, names)

        return depths


def refuse_cluster_takeover(
    events: EventStore, run_id: RunId, *, force: bool, history: RunHistory | None = None
) -> None:
    """Driving a cluster's run from here would run attempts without leases, which the
    cluster then takes for orphans: refused with `run_managed_by_cluster` unless `force`
    (its workers are gone for good), and always while a worker still holds a live lease on
    one of its open attempts (`attempt_lease_live`: that attempt would run twice, at once).
    Nothing to check on the embedded stores or for a finished run (docs/execution.md).
    `history`: the run's, when the caller has read it already."""
    cluster = ClusterView.of(events)
    if cluster is None:
        return
    if history is None:
        history = RunHistory.load(events, run_id)
    if history.completed is not None:
        return
    if not force and cluster.recorded_plan(run_id) is not None:
        raise InvalidInput(
            "run_managed_by_cluster",
            f"run {run_id} was submitted to a cluster; use `mfm resume --cluster`, "
            "or --force if its workers are gone for good",
        )
    live = cluster.leases(run_id, [s for s, _ in history.open_attempts()])
    if live:
        state_id, lease = min(live.items())
        raise InvalidInput(
            "attempt_lease_live",
            f"run {run_id}: {len(live)} attempt(s) are running on the cluster now "
            f"({state_id} attempt {lease.attempt} on {lease.worker}); resume it with "
            "`mfm resume --cluster`, or wait until no worker holds a lease",
        )
