"""A small LRU map bounded by entry count and by a total weight (callers lock around it).

The one LRU of the project: the snapshot caches, the workers' run contexts, fact indexes and
coordinated runs, the backfill drivers and the dashboard's run views all use it. Kept here
rather than taking `cachetools`: its `LRUCache` bounds one measure (a `getsizeof` total) and
refuses an entry heavier than the bound, while these caches bound two (entries and weight)
and must always keep the newest entry — the run being coordinated, the snapshot a run just
wrote — whatever it weighs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class Lru(Generic[V]):
    """Least-recently-used entries go first once there are more than `max_entries` or their
    weights add up to more than `max_weight` (None: no weight bound). The newest entry is
    always kept, whatever its weight: the snapshot a run just wrote is the one its next
    state starts from (only `max_entries=0` keeps nothing)."""

    def __init__(self, max_entries: int, max_weight: int | None = None) -> None:
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_weight = max_weight
        self._weight = 0

    def get(self, key: str) -> V | None:
        """The entry (now the most recently used), or None."""
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def peek(self, key: str) -> V | None:
        """The entry without counting as a use (None: absent)."""
        hit = self._items.get(key)
        return None if hit is None else hit[0]

    def keys(self) -> list[str]:
        """The keys, least recently used first (the next to go first)."""
        return list(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def weight(self) -> int:
        return self._weight

    def put(self, key: str, value: V, weight: int = 1) -> None:
        """Add or replace `key` as the most recently used entry, then drop the least
        recently used ones until the bounds hold."""
        previous = self._items.pop(key, None)
        if previous is not None:
            self._weight -= previous[1]
        self._items[key] = (value, weight)
        self._weight += weight
        while self._items and (len(self._items) > self._max_entries or self._too_heavy()):
            _, (_, dropped) = self._items.popitem(last=False)
            self._weight -= dropped

    def _too_heavy(self) -> bool:
        limit = self._max_weight
        return limit is not None and len(self._items) > 1 and self._weight > limit

    def pop(self, key: str) -> V | None:
        hit = self._items.pop(key, None)
        if hit is None:
            return None
        self._weight -= hit[1]
        return hit[0]

    def clear(self) -> None:
        self._items.clear()
        self._weight = 0
