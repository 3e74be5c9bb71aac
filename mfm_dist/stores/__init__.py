"""Event and artifact store backends, chosen by URL (see `mfm_dist.stores.urls`)."""

from mfm_dist.stores.base import EventStore
from mfm_dist.stores.guards import GuardViolation
from mfm_dist.stores.memory import InMemoryArtifactStore, InMemoryEventStore
from mfm_dist.stores.urls import Stores, open_artifact_store, open_event_store, open_stores

__all__ = [
    "EventStore",
    "GuardViolation",
    "InMemoryArtifactStore",
    "InMemoryEventStore",
    "Stores",
    "open_artifact_store",
    "open_event_store",
    "open_stores",
]
