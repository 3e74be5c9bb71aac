"""The one LRU of the project (`mfm_dist.engine.lru`): bounded by entries and by weight,
the newest entry always kept, reads counting as use except `peek`."""

from __future__ import annotations

from mfm_dist.engine.lru import Lru


def test_least_recently_used_goes_first() -> None:
    lru: Lru[int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recently used
    lru.put("c", 3)
    assert lru.keys() == ["a", "c"] and "b" not in lru and len(lru) == 2


def test_peek_does_not_count_as_use() -> None:
    lru: Lru[int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.peek("a") == 1 and lru.peek("z") is None
    lru.put("c", 3)
    assert lru.keys() == ["b", "c"]


def test_weight_bound_and_the_newest_entry_is_always_kept() -> None:
    lru: Lru[str] = Lru(10, max_weight=30)
    lru.put("small", "s", 20)
    lru.put("medium", "m", 15)  # 35 > 30: the older one goes
    assert lru.keys() == ["medium"] and lru.weight == 15
    lru.put("huge", "h", 100)  # heavier than the bound on its own: still kept
    assert lru.keys() == ["huge"] and lru.weight == 100


def test_replacing_an_entry_replaces_its_weight() -> None:
    lru: Lru[str] = Lru(10, max_weight=100)
    lru.put("a", "1", 40)
    lru.put("b", "2", 40)
    lru.put("a", "3", 10)
    assert lru.weight == 50 and lru.keys() == ["b", "a"] and lru.get("a") == "3"
    assert lru.pop("b") == "2" and lru.weight == 10 and lru.pop("b") is None
    lru.clear()
    assert len(lru) == 0 and lru.weight == 0


def test_no_weight_bound_by_default_and_zero_entries_keeps_nothing() -> None:
    lru: Lru[int] = Lru(3)
    for n in range(5):
        lru.put(str(n), n, 1 << 40)
    assert lru.keys() == ["2", "3", "4"]
    none: Lru[int] = Lru(0)
    none.put("a", 1)
    assert len(none) == 0 and none.get("a") is None
