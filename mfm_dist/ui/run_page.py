"""The run page's graph: the drawing (graph_layout, graph_svg), the squares — one per state,
a row per dependency level — and the data the page's scripts need to keep both live.

What depends on the plan alone (the rows, the layout, the state ids as JSON) is made once
per plan (`PlanShape.memo`); a request only colours it. State ids are sent once, as a
common prefix and each state's rest, and index lists as `[start, count]` ranges: a
10,000-state fan-out's page carries two ranges, not 10,000 indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import orjson
from markupsafe import Markup, escape

from mfm_dist.reports import RunReport, StateStatus
from mfm_dist.secrets import contains_secret, is_secret_string
from mfm_dist.ui.data import LEVELED_MAX, STATUS_LETTERS, RunView
from mfm_dist.ui.graph_layout import Layout, common_prefix, layout
from mfm_dist.ui.graph_svg import render_svg
from mfm_dist.ui.safety import REDACTED, scrub

T = TypeVar("T")
CELLS = {letter: f"<i class={letter}></i>" for letter in STATUS_LETTERS.values()}


@dataclass(frozen=True)
class RunGraph:
    grid: Markup
    """The squares: a row per dependency level (one row in canonical order for deep plans)."""
    drawing: Markup | None
    not_drawn: str | None
    """Why there is no drawing."""
    data: Markup
    """JSON for static/run.js and static/dag.js, safe inside a <script> element."""
    boxes: int


def index_ranges(indices: Sequence[int]) -> list[list[int]]:
    """Ascending indices as `[start, count]` runs."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return out


def grid_rows(levels: Sequence[int], n: int) -> list[tuple[str, list[int]]]:
    """The squares' rows: (title, canonical indices), one per dependency level, or one in
    canonical order when the plan is deeper than `LEVELED_MAX` levels (or unknown)."""
    if n == 0:
        return []
    depth = max(levels, default=0) + 1 if len(levels) == n else 0
    if not 0 < depth <= LEVELED_MAX:
        return [("canonical order", list(range(n)))]
    rows: list[list[int]] = [[] for _ in range(depth)]
    for i in range(n):
        rows[levels[i]].append(i)
    return [(f"level {k}", row) for k, row in enumerate(rows) if row]


def _script_json(value: object) -> str:
    text = orjson.dumps(value).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(frozen=True)
class _PlanParts:
    """What a page needs of the plan alone."""

    rows: list[tuple[str, list[int]]]
    layout: Layout | None
    fixed_json: str
    """The JSON members that depend on the plan only (ids, rows, the drawing's groups)."""


def _plan_parts(view: RunView, n: int) -> _PlanParts:
    drawn = layout(view.order, view.preds, view.levels) if view.shape is not None else None
    rows = grid_rows(view.levels, n)
    prefix = common_prefix(view.order) if view.order else ""
    cut = len(prefix)
    if contains_secret(view.order):  # one compiled scan; per id only when something is
        rests = [REDACTED if is_secret_string(s) else s[cut:] for s in view.order]
    else:
        rests = [s[cut:] for s in view.order]
    groups = {}
    if drawn is not None:
        groups = {str(b.key): index_ranges(b.members) for b in drawn.boxes if b.kind != "state"}
    fixed = {
        "prefix": scrub(prefix),
        "rests": rests,
        "rows": [index_ranges(row) for _, row in rows],
        "groups": groups,
    }
    return _PlanParts(rows, drawn, _script_json(fixed)[1:-1])


def _memo(view: RunView, name: str, make: Callable[[], T]) -> T:
    return view.shape.memo(name, make) if view.shape is not None else make()


def run_graph(view: RunView, report: RunReport) -> RunGraph:
    """The page's graph for `report` (the run's statuses now)."""
    letters = "".join(STATUS_LETTERS[s.status] for s in report.states)
    n = len(letters)
    parts = _memo(view, f"page-parts:{n}", lambda: _plan_parts(view, n))
    grid = Markup(
        "".join(
            f'<div class="level"><span class="level-name">{escape(title)}</span>'
            f'<div class="cells">{"".join([CELLS[letters[i]] for i in row])}</div></div>'
            for title, row in parts.rows
        )
    )
    drawing: Markup | None = None
    not_drawn: str | None = None
    if parts.layout is None:
        not_drawn = f"not drawn: the plan is unavailable ({view.plan_problem or 'unknown'})"
    elif parts.layout.not_drawn is not None:
        not_drawn = parts.layout.not_drawn
    else:
        drawing = render_svg(parts.layout, letters, view.order)
    codes = {
        str(i): s.last_error_code
        for i, s in enumerate(report.states)
        if s.last_error_code is not None and s.status in (StateStatus.FAILED, StateStatus.RETRYING)
    }
    data = "{" + parts.fixed_json + ',"codes":' + _script_json(scrub(codes)) + "}"
    boxes = len(parts.layout.boxes) if parts.layout is not None else 0
    return RunGraph(grid, drawing, not_drawn, Markup(data), boxes)
