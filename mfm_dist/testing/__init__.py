"""Test support for code built on mfm-dist (requires pytest).

* `EventStoreContract`, `ArtifactStoreContract`: the store contract as test classes — subclass
  them to check a backend of your own (see `mfm_dist.testing.store_contract`).
"""

from mfm_dist.testing.store_contract import ArtifactStoreContract, EventStoreContract

__all__ = ["ArtifactStoreContract", "EventStoreContract"]
