"""The reachability index (mfm_dist/reach.py) against the bitmask ancestors it replaced.

On a few hundred random plans — chains, fan-outs, fan-out/join stages, lattices, random DAGs,
forests with several roots, declared in shuffled order — every query of the index and every
result of `MergeTracker` (conflicts, pairs, blocked states, base and final plans) must be
exactly what the old bitmask code gives (tests/support/reach_oracle.py)."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from mfm_dist.engine.merge import Delta, MergeTracker
from mfm_dist.plan import CompiledPlan
from mfm_dist.reach import Reachability
from support.reach_oracle import (
    LegacyReach,
    LegacyTracker,
    Shape,
    chain,
    fan_out,
    lattice,
    plan_of,
    random_dag,
    stages,
)


def random_shape(rng: random.Random) -> Shape:
    kind = rng.choice(["chain", "fan_out", "stages", "lattice", "random", "forest"])
    if kind == "chain":
        return chain(rng.randint(1, 40))
    if kind == "fan_out":
        return fan_out(rng.randint(1, 30))
    if kind == "stages":
        return stages(rng.randint(1, 6), rng.randint(1, 5), rng.randint(1, 3))
    if kind == "lattice":
        return lattice(rng.randint(1, 6), rng.randint(1, 10))
    if kind == "random":
        return random_dag(rng, rng.randint(1, 60), rng.randint(1, 4), rng.randint(1, 20))
    # Several components side by side, with a few edges from earlier ones to later ones.
    n, edges = 0, []
    for _ in range(rng.randint(2, 4)):
        size, part = random_shape(rng) if rng.random() < 0.5 else chain(rng.randint(1, 10))
        edges += [(a + n, b + n) for a, b in part]
        n += size
    for _ in range(rng.randint(0, 3) if n > 1 else 0):
        a, b = sorted(rng.sample(range(n), 2))
        edges.append((a, b))
    return n, sorted(set(edges))


def check_index(plan: CompiledPlan, legacy: LegacyReach, rng: random.Random) -> None:
    reach, n = plan.reach, len(plan)
    for b in range(n):
        assert reach.count(b) == legacy.count(b)
        assert reach.prefix(b) == legacy.prefix(b)
        for a in range(n):
            assert plan.is_ancestor(a, b) == legacy.is_ancestor(a, b), (a, b)
            assert plan.ordered(a, b) == (legacy.is_ancestor(a, b) or legacy.is_ancestor(b, a))
        # The predecessors (what base_plan asks) and a sample of other ancestors.
        covers: list[int | None] = [None, *plan.preds[b]]
        covers += [a for a in range(b) if legacy.is_ancestor(a, b) and rng.random() < 0.2]
        for cover in covers:
            assert reach.ancestors_outside(b, cover) == legacy.ancestors_outside(b, cover)


def random_delta(rng: random.Random, i: int, keys: int) -> Delta:
    writes = {f"k{rng.randrange(keys)}": i for _ in range(rng.randint(0, 3))}
    deletes = {f"k{rng.randrange(keys)}" for _ in range(rng.randint(0, 1))} - set(writes)
    if rng.random() < 0.5:
        writes[f"own{i}"] = i
    return Delta(writes=writes, deletes=frozenset(deletes))


def completion_order(plan: CompiledPlan, rng: random.Random) -> list[int]:
    """A random order states could complete in (predecessors first), a random subset of it,
    or — as a history read back might give — any order at all, with a repeat."""
    n = len(plan)
    style = rng.random()
    if style < 0.2:
        order = rng.sample(range(n), rng.randint(0, n))
        if order and rng.random() < 0.5:
            order.insert(rng.randrange(len(order) + 1), rng.choice(order))
        return order
    waiting = [len(p) for p in plan.preds]
    ready = [i for i in range(n) if waiting[i] == 0]
    order = []
    while ready:
        i = ready.pop(rng.randrange(len(ready)))
        order.append(i)
        for j in plan.succs[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    return order if style < 0.6 else order[: rng.randint(0, n)]


def check_tracker(plan: CompiledPlan, legacy: LegacyReach, rng: random.Random) -> None:
    n = len(plan)
    detect = rng.random() < 0.9
    new = MergeTracker(plan, detect_conflicts=detect)
    old = LegacyTracker(plan, legacy.ancestors, detect_conflicts=detect)
    for i in range(n):
        assert new.base_plan(i) == old.base_plan(i), i
    keys = rng.choice([1, 3, n + 1, 4 * n + 1])
    order = completion_order(plan, rng)
    for step, i in enumerate(order):
        delta = random_delta(rng, i, keys)
        assert new.record(i, f"{step:064x}", delta) == old.record(i, f"{step:064x}", delta)
        assert new.pairs == old.pairs
        if n <= 60 or step % 16 == 0 or step == len(order) - 1:  # (quadratic: sampled)
            assert new.first_conflict() == old.first_conflict()
            assert new.final_plan() == old.final_plan()
            assert [new.blocks(j) for j in range(n)] == [old.blocks(j) for j in range(n)]


@pytest.mark.parametrize("seed", range(300))
def test_the_index_and_the_tracker_agree_with_the_bitmasks(seed: int) -> None:
    rng = random.Random(seed)
    plan = plan_of(random_shape(rng), rng, shuffle=rng.random() < 0.5).compiled
    legacy = LegacyReach(plan.preds)
    check_index(plan, legacy, rng)
    check_tracker(plan, legacy, rng)


@pytest.mark.parametrize(
    "shape",
    [chain(2_000), fan_out(2_000), stages(20, 50, 2), lattice(10, 200)],
    ids=["chain", "fan_out", "stages", "lattice"],
)
def test_large_shapes_agree_with_the_bitmasks(shape: tuple[int, list[tuple[int, int]]]) -> None:
    plan = plan_of(shape).compiled
    legacy = LegacyReach(plan.preds)
    rng = random.Random(len(plan))
    for _ in range(3_000):
        a, b = rng.randrange(len(plan)), rng.randrange(len(plan))
        assert plan.is_ancestor(a, b) == legacy.is_ancestor(a, b)
    new, old = MergeTracker(plan), LegacyTracker(plan, legacy.ancestors)
    for i in range(len(plan)):
        assert new.base_plan(i) == old.base_plan(i)
        delta = Delta(writes={f"own{i}": i, "n": i} if i % 7 else {f"own{i}": i})
        assert new.record(i, f"{i:064x}", delta) == old.record(i, f"{i:064x}", delta)
    assert new.pairs == old.pairs and new.final_plan() == old.final_plan()


def test_a_chain_is_all_prefix() -> None:
    """Every chain state's ancestors are the positions before it: one integer each, and its
    base is its predecessor's snapshot with nothing to apply."""
    plan = plan_of(chain(1_000)).compiled
    tracker = MergeTracker(plan)
    for p in range(1, len(plan)):
        assert plan.reach.prefix(p) == p and plan.reach.count(p) == p
        assert tracker.base_plan(p) == (p - 1, [])


@pytest.mark.parametrize(
    ("shape", "bytes_per_state"),
    [(chain(20_000), 40), (fan_out(20_000), 40), (stages(100, 100, 2), 100)],
    ids=["chain", "fan_out", "stages"],
)
def test_the_index_is_linear_for_chains_and_fan_outs(
    shape: tuple[int, list[tuple[int, int]]], bytes_per_state: int
) -> None:
    """The bitmasks held n²/2 bits for a chain (25 MB at 20,000 states, 1.2 KB per state);
    the index holds a prefix per state and, for fan-out stages, bits of one stage."""
    plan = plan_of(shape).compiled
    tracemalloc.start()
    index = Reachability(plan.preds)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert held / len(plan) < bytes_per_state, f"{held / len(plan):.0f} bytes per state"
    assert index.count(len(plan) - 1) == len(plan) - 1
