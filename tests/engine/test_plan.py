"""Plan validation, canonical order and pipeline flattening (docs/plans.md)."""

from __future__ import annotations

import pytest

from mfm_dist import (
    ExecutionPlan,
    FnState,
    InvalidPlan,
    Pipeline,
    PipelineStep,
    RunConfig,
    StateGraph,
)
from mfm_dist.ids import OpId
from mfm_dist.operations import OperationNotFound
from support.engine_helpers import GraphOp, registry_with

NOOP = FnState(lambda ctx, io, rec: None)


def plan_of(names: list[str], edges: list[tuple[str, str]]) -> ExecutionPlan:
    graph = StateGraph()
    for n in names:
        graph.add(f"m.main.{n}", NOOP)
    for a, b in edges:
        graph.edge(f"m.main.{a}", f"m.main.{b}")
    return ExecutionPlan(op_id=OpId("m"), graph=graph)


def reason(plan: ExecutionPlan) -> dict[str, object]:
    with pytest.raises(InvalidPlan) as info:
        plan.validate()
    assert info.value.code == "invalid_plan"
    details = info.value.info.details
    assert isinstance(details, dict)
    return details


def test_empty_plan() -> None:
    assert reason(plan_of([], []))["reason"] == "empty_plan"


def test_duplicate_state() -> None:
    details = reason(plan_of(["a", "a"], []))
    assert details == {"reason": "duplicate_state", "state_id": "m.main.a"}


def test_edge_to_missing_state() -> None:
    details = reason(plan_of(["a"], [("a", "b")]))
    assert details == {"reason": "missing_state", "state_id": "m.main.b"}


def test_cycle_is_named() -> None:
    details = reason(
        plan_of(["x", "a", "b", "c"], [("x", "a"), ("a", "b"), ("b", "c"), ("c", "a")])
    )
    assert details == {"reason": "cycle", "cycle": ["m.main.a", "m.main.b", "m.main.c"]}


def test_self_loop_is_a_cycle() -> None:
    assert reason(plan_of(["a"], [("a", "a")]))["cycle"] == ["m.main.a"]


def test_canonical_order_is_kahn_in_declaration_order() -> None:
    plan = plan_of(["d", "c", "b", "a"], [("a", "b"), ("c", "b"), ("d", "a")])
    # Zero in-degree seeds in declaration order: d, c; then edges in declaration order.
    assert [s.local_id for s in plan.canonical_order()] == ["d", "c", "a", "b"]


def test_ancestors_are_transitive() -> None:
    plan = plan_of(["a", "b", "c", "d"], [("a", "b"), ("b", "c")])
    compiled = plan.compiled
    pos = compiled.position
    assert compiled.is_ancestor(pos["m.main.a"], pos["m.main.c"])
    assert not compiled.ordered(pos["m.main.d"], pos["m.main.c"])


def test_pipeline_flattens_into_one_plan() -> None:
    fan = GraphOp("fan", {"x": NOOP, "y": NOOP})
    chain = GraphOp("chain", {"p": NOOP, "q": NOOP, "r": NOOP}, [("p", "q"), ("p", "r")])
    registry = registry_with(fan, chain)
    pipeline = Pipeline(
        machine_id="machine",
        pipeline_version="2",
        steps=[
            PipelineStep(step_id="one", op_id="fan", op_version="1"),
            PipelineStep(step_id="two", op_id="chain", op_version="1"),
        ],
    )
    plan = registry.plan_for(pipeline, RunConfig())
    assert plan.op_id == "machine"
    ids = [str(s) for s in plan.canonical_order()]
    assert ids == [
        "machine.one.x",
        "machine.one.y",
        "machine.two.p",
        "machine.two.q",
        "machine.two.r",
    ]  # N + M states, no barrier state
    edges = {(str(e.from_), str(e.to)) for e in plan.graph.edges}
    # Each sink of step one precedes each source of step two.
    assert {("machine.one.x", "machine.two.p"), ("machine.one.y", "machine.two.p")} <= edges


def test_registry_resolves_versions() -> None:
    registry = registry_with(
        GraphOp("v", {"a": NOOP}, version="1"), GraphOp("v", {"b": NOOP}, version="10")
    )
    assert registry.get("v").op_version == "10"
    assert registry.get("v", "1").op_version == "1"
    with pytest.raises(OperationNotFound):
        registry.get("v", "3")
    with pytest.raises(OperationNotFound):
        registry.get("nope")


def test_state_outside_op_path_rejected() -> None:
    class Rogue(GraphOp):
        def expand(self, op_path, op_config, run_config):  # type: ignore[no-untyped-def]
            graph = StateGraph()
            graph.add("other.main.a", NOOP)
            return graph

    registry = registry_with(Rogue("rogue", {}))
    with pytest.raises(InvalidPlan):
        registry.plan_for(Pipeline.single(registry.get("rogue"), {}), RunConfig())


def test_operations_from_env_and_modules(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    module = tmp_path / "my_ops_mod.py"
    module.write_text(
        "from support.engine_helpers import GraphOp\n"
        "from mfm_dist import FnState\n"
        "def register_operations(registry):\n"
        "    registry.register(GraphOp('from_env', {'a': FnState(lambda c, i, r: None)}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MFM_OPERATIONS", "my_ops_mod")
    from mfm_dist.operations import OperationRegistry

    registry = OperationRegistry.default()
    assert registry.get("from_env").op_id == "from_env"
    assert registry.get("fanout_demo").op_id == "fanout_demo"  # entry point / built-in examples
    from mfm_dist.errors import InvalidInput

    with pytest.raises(InvalidInput) as info:
        OperationRegistry.default(["no_such_module_xyz"])
    assert info.value.code == "operations_module_not_found"
