"""`ClusterView`: what the CLI and the dashboard read from the distributed backend, in one
place (docs/dashboard.md, docs/distributed.md).

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

from mfm_dist.stores.base import EventStore
from mfm_dist.stores.urls import REDIS_SCHEMES

if TYPE_CHECKING:
    from workers.leases import Coordination, LeaseInfo
    from workers.settings import ClusterSettings
    from workers.submission_log import Rejection


class ClusterView:
    """The distributed backend, as the CLI and the dashboard see it: read-only, over the
    Redis the event store uses. `settings` builds the cluster's settings (read by the CLI
    at its start) when something needs the broker."""

    def __init__(self, client: Any, settings: Callable[[], ClusterSettings]) -> None:
        from workers.leases import Coordination

        self._client = client
        self._settings = settings
        self._coordination: Coordination = Coordination(client)

    @classmethod
    def of(
        cls, events: EventStore, settings: Callable[[], ClusterSettings]
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
        settings = self._settings()
        if settings.broker is None:
            return None
        celery_app = create_app(settings)

        def depths() -> dict[str, int]:
            names = [q.name for q in celery_app.conf.task_queues or ()]
            return broker_queue_depths(celery_app, names)

        return depths
