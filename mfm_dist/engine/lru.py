"""A small LRU map bounded by entry count and by a total weight (callers lock around it)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class Lru(Generic[V]):
    """Least-recently-used entries go first once there are more than `max_entries` or their
    weights add up to more than `max_weight`. The newest entry is always kept, whatever its
    weight: the snapshot a run just wrote is the one its next state starts from."""

    def __init__(self, max_entries: int, max_weight: int) -> None:
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_weight = max_weight
        self._weight = 0

    def get(self, key: str) -> V | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def weight(self) -> int:
        return self._weight

    def put(self, key: str, value: V, weight: int = 1) -> None:
        previous = self._items.pop(key, None)
        if previous is not None:
            self._weight -= previous[1]
        self._items[key] = (value, weight)
        self._weight += weight
        while len(self._items) > 1 and (
            len(self._items) > self._max_entries or self._weight > self._max_weight
        ):
            _, (_, dropped) = self._items.popitem(last=False)
            self._weight -= dropped

    def pop(self, key: str) -> V | None:
        hit = self._items.pop(key, None)
        if hit is None:
            return None
        self._weight -= hit[1]
        return hit[0]

    def clear(self) -> None:
        self._items.clear()
        self._weight = 0
