"""The drawn run graph's layout and SVG (mfm_dist/ui/graph_layout.py, graph_svg.py), from
plans of known shapes: one box per state and one edge per dependency while the plan is
small; wide levels and long chains grouped; too large a plan not drawn, with its reason;
boxes placed left to right by level without overlapping; secret-shaped ids never shown."""

from __future__ import annotations

import re

from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import prepare_run
from mfm_dist.operations import OperationRegistry
from mfm_dist.ui.graph_layout import (
    LONG_CHAIN,
    MAX_BOXES,
    WIDE_LEVEL,
    Layout,
    common_prefix,
    family,
    layout,
)
from mfm_dist.ui.graph_svg import BAR_ORDER, bar_stops, count_line, render_svg
from mfm_dist.ui.loading import PlanShape
from mfm_dist.ui.run_page import grid_rows, index_ranges


def shape(op: str, run_input: JsonValue) -> PlanShape:
    registry = OperationRegistry.default(("support.ui_ops",))
    prepared = prepare_run(registry, op, run_input, RunConfig())
    return PlanShape.of(prepared.manifest, prepared.plan)


def laid_out(s: PlanShape) -> Layout:
    return layout(s.order, s.preds, s.levels)


def plan_edges(s: PlanShape) -> set[tuple[str, str]]:
    return {(s.order[p], s.order[i]) for i, ps in enumerate(s.preds) for p in ps}


def drawn_edges(s: PlanShape, drawn: Layout) -> set[tuple[str, str]]:
    state = {b.key: s.order[b.members[0]] for b in drawn.boxes if b.kind == "state"}
    return {(state[e.source], state[e.target]) for e in drawn.edges}


def test_a_small_plan_has_a_box_per_state_and_an_edge_per_dependency() -> None:
    for op, run_input in [
        ("fanout_demo", {"items": 12}),
        ("etl_demo", None),
        ("lattice", {"levels": 3, "width": 4}),
        ("chain_demo", {"states": LONG_CHAIN}),
    ]:
        s = shape(op, run_input)
        drawn = laid_out(s)
        assert drawn.not_drawn is None, op
        assert [b.kind for b in drawn.boxes] == ["state"] * len(s.order), op
        assert sorted(b.members[0] for b in drawn.boxes) == list(range(len(s.order)))
        assert drawn_edges(s, drawn) == plan_edges(s), op
        assert all(e.count == 1 for e in drawn.edges)
    lattice = laid_out(shape("lattice", {"levels": 3, "width": 4}))
    assert len(lattice.edges) == 2 * 4 * 4


def test_boxes_go_left_to_right_by_level_and_never_overlap() -> None:
    s = shape("lattice", {"levels": 4, "width": 5})
    drawn = laid_out(s)
    for box in drawn.boxes:
        assert box.layer == s.levels[box.members[0]]
    for e in drawn.edges:
        source, target = drawn.boxes[e.source], drawn.boxes[e.target]
        assert source.x + source.w < target.x
    for a in drawn.boxes:
        for b in drawn.boxes:
            if a.key < b.key and a.x == b.x:
                assert a.y + a.h <= b.y or b.y + b.h <= a.y, (a, b)
        assert a.x >= 0 and a.x + a.w <= drawn.width and a.y + a.h <= drawn.height


def test_a_wide_level_is_one_box_per_family() -> None:
    s = shape("fanout_demo", {"items": 9999})
    drawn = laid_out(s)
    assert [(b.kind, len(b.members)) for b in drawn.boxes] == [("family", 9999), ("state", 1)]
    group, join = drawn.boxes
    assert group.label == "item_0000 … item_9998" and join.label == "join"
    assert [(e.source, e.target, e.count) for e in drawn.edges] == [(group.key, join.key, 9999)]
    assert family("fanout_demo.main.item_0042") == "fanout_demo.main.item_"


def test_a_wide_level_of_many_families_is_one_box() -> None:
    # A lattice level has one family (l01_s…); a level whose ids all differ is one box.
    order = [f"m.s.{name}" for name in ("a", "b")] + [
        f"m.s.x{chr(97 + k // 26)}{chr(97 + k % 26)}" for k in range(WIDE_LEVEL + 1)
    ]
    preds: list[list[int]] = [[], []] + [[0, 1]] * (WIDE_LEVEL + 1)
    drawn = layout(order, preds, [0, 0] + [1] * (WIDE_LEVEL + 1))
    assert [(b.kind, len(b.members)) for b in drawn.boxes] == [
        ("state", 1),
        ("state", 1),
        ("level", WIDE_LEVEL + 1),
    ]
    assert sorted(e.count for e in drawn.edges) == [WIDE_LEVEL + 1] * 2


def test_a_long_chain_is_one_box() -> None:
    drawn = laid_out(shape("chain_demo", {"states": 10_000}))
    assert [(b.kind, len(b.members)) for b in drawn.boxes] == [("chain", 10_000)]
    assert drawn.edges == [] and drawn.boxes[0].label == "step_0000 → step_9999"


def test_too_large_a_plan_is_not_drawn_and_says_why() -> None:
    drawn = laid_out(shape("lattice", {"levels": 30, "width": 20}))
    assert drawn.boxes == [] and drawn.edges == []
    assert drawn.not_drawn is not None
    assert "600 states need 600 boxes" in drawn.not_drawn
    assert f"{MAX_BOXES} boxes" in drawn.not_drawn


def test_svg_colours_states_and_counts_groups() -> None:
    s = shape("fanout_demo", {"items": 30})
    drawn = laid_out(s)
    letters = "C" * 20 + "R" * 5 + "F" * 5 + "P"
    svg = str(render_svg(drawn, letters, s.order))
    assert svg.count('class="grp"') == 1 and svg.count('<g class="n ') == 1
    assert '<g class="n P" data-box="1" data-i="30" data-state="fanout_demo.main.join"' in svg
    assert "20/30 done · 5 running · 5 failed" in svg
    widths = dict(re.findall(r'<rect class="([A-Z])" x="\d+" width="(\d+)"', svg))
    assert list(widths) == list(BAR_ORDER)
    assert sum(map(int, widths.values())) == drawn.boxes[0].w - 16
    assert int(widths["C"]) > int(widths["R"]) > 0 and int(widths["F"]) > 0 == int(widths["P"])
    assert abs(int(widths["R"]) - int(widths["F"])) <= 1  # 5 of 30 each, rounded
    assert svg.count('<path class="e" data-from="0" data-to="1" data-count="30"') == 1


def test_bars_and_count_lines() -> None:
    stops = bar_stops({"C": 1, "F": 1, "P": 1}, 3, 160)
    assert stops[0] == ("C", 0, 53) and stops[-1] == ("P", 107, 53)
    assert sum(w for _, _, w in stops) == 160
    assert count_line({"C": 2, "S": 1, "T": 1}, 5) == "3/5 done · 1 retrying"


def test_secret_shaped_ids_are_never_drawn() -> None:
    order = ["m.s.first", "m.s.api_key_holder"]
    drawn = layout(order, [[], [0]], [0, 1])
    svg = str(render_svg(drawn, "CC", order))
    assert "api_key" not in svg and "&lt;redacted&gt;" in svg


def test_ids_and_rows_are_sent_compactly() -> None:
    assert common_prefix(["a.b.c1", "a.b.c2", "a.b.d"]) == "a.b."
    assert common_prefix(["a.b.c", "a.x.c"]) == "a."
    assert common_prefix(["m.s.only"]) == "m.s."
    assert index_ranges([0, 1, 2, 5, 6, 9]) == [[0, 3], [5, 2], [9, 1]]
    assert grid_rows([0, 0, 1], 3) == [("level 0", [0, 1]), ("level 1", [2])]
    assert grid_rows(list(range(100)), 100) == [("canonical order", list(range(100)))]
