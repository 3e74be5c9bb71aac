"""The drawn run graph as inline SVG, from its layout and the states' statuses.

A state's box carries its status letter as a class (`n C`: completed; the colours are in
ui.css) and its canonical index (`data-i`); a group's box shows a bar of its states'
statuses (one segment per status, in `BAR_ORDER`) and a count line. Edges run from the
right of a box to the left of a box in a later column; `data-from`/`data-to` name the
boxes (`data-box`) and `data-count` how many dependencies an edge stands for. The page's
script (static/dag.js) recolours the same elements from the live statuses, with the same
arithmetic as `bar_stops` and `count_line`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

from mfm_dist.ui.graph_layout import Box, Layout
from mfm_dist.ui.safety import shown

BAR_ORDER = "CSRTFP"
"""Bar segments: completed, skipped, running, retrying, failed, pending."""
BAR_X = 8
BAR_Y = 22
BAR_H = 8


def bar_stops(counts: dict[str, int], total: int, width: int) -> list[tuple[str, int, int]]:
    """(letter, x, width) of each bar segment, in `BAR_ORDER`."""
    out: list[tuple[str, int, int]] = []
    seen = 0
    for letter in BAR_ORDER:
        x0 = _half_up(width * seen / total) if total else 0
        seen += counts.get(letter, 0)
        x1 = _half_up(width * seen / total) if total else 0
        out.append((letter, x0, x1 - x0))
    return out


def _half_up(x: float) -> int:
    """Rounded as JavaScript's Math.round rounds (the page redraws bars with it)."""
    return math.floor(x + 0.5)


def count_line(counts: dict[str, int], total: int) -> str:
    """A group's status in words: `120/9,999 done · 8 running · 2 failed`."""
    done = counts.get("C", 0) + counts.get("S", 0)
    parts = [f"{done:,}/{total:,} done"]
    for letter, name in (("R", "running"), ("T", "retrying"), ("F", "failed")):
        if counts.get(letter):
            parts.append(f"{counts[letter]:,} {name}")
    return " · ".join(parts)


def _text(value: str) -> Markup:
    return escape(shown(value))


def _state_box(box: Box, letter: str, state_id: str) -> str:
    return (
        f'<g class="n {letter}" data-box="{box.key}" data-i="{box.members[0]}" '
        f'data-state="{_text(state_id)}" transform="translate({box.x},{box.y})">'
        f'<rect width="{box.w}" height="{box.h}" rx="4"/>'
        f'<text x="8" y="{box.h // 2 + 4}">{_text(box.label)}</text>'
        f"<title>{_text(state_id)}</title></g>"
    )


def _group_box(box: Box, letters: str) -> str:
    counts: dict[str, int] = {}
    for i in box.members:
        letter = letters[i] if i < len(letters) else "P"
        counts[letter] = counts.get(letter, 0) + 1
    total = len(box.members)
    width = box.w - 2 * BAR_X
    segments = "".join(
        f'<rect class="{letter}" x="{x}" width="{w}" height="{BAR_H}"/>'
        for letter, x, w in bar_stops(counts, total, width)
    )
    what = {"family": "states", "chain": "states in a chain", "level": "states of one level"}
    title = f"{total:,} {what.get(box.kind, 'states')}: {box.label}"
    return (
        f'<g class="grp" data-box="{box.key}" data-kind="{box.kind}" data-size="{total}" '
        f'transform="translate({box.x},{box.y})">'
        f'<rect class="frame" width="{box.w}" height="{box.h}" rx="5"/>'
        f'<text x="{BAR_X}" y="15">{_text(box.label)}</text>'
        f'<g class="bar" transform="translate({BAR_X},{BAR_Y})">{segments}</g>'
        f'<text class="gc" x="{BAR_X}" y="{box.h - 6}">{escape(count_line(counts, total))}</text>'
        f"<title>{_text(title)}</title></g>"
    )


def _edge(source: Box, target: Box, count: int) -> str:
    x1, y1 = source.x + source.w, source.y + source.h / 2
    x2, y2 = target.x, target.y + target.h / 2
    bend = max(24.0, (x2 - x1) / 2)
    stroke = 1.25 + min(3.0, math.log10(count)) if count > 1 else 1.25
    title = f"<title>{count:,} dependencies</title>" if count > 1 else ""
    path = f"M{x1},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f} {x2},{y2:.0f}"
    return (
        f'<path class="e" data-from="{source.key}" data-to="{target.key}" data-count="{count}" '
        f'stroke-width="{stroke:.2f}" d="{path}">{title}</path>'
    )


def render_svg(layout: Layout, letters: str, ids: Sequence[str]) -> Markup:
    """The drawing, coloured by `letters` (one status letter per state, canonical order)."""
    boxes = layout.boxes
    edges = "".join(_edge(boxes[e.source], boxes[e.target], e.count) for e in layout.edges)
    nodes = "".join(
        _state_box(b, letters[b.members[0]] if b.members[0] < len(letters) else "P",
                   ids[b.members[0]])
        if b.kind == "state"
        else _group_box(b, letters)
        for b in boxes
    )  # fmt: skip
    return Markup(
        f'<svg id="dag" class="dag" width="{layout.width}" height="{layout.height}" '
        f'viewBox="0 0 {layout.width} {layout.height}" role="img" '
        f'aria-label="the run graph: {len(boxes)} boxes, {len(layout.edges)} edges">'
        '<defs><marker id="dag-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="8" '
        'markerHeight="8" markerUnits="userSpaceOnUse" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z"/></marker></defs>'
        f'<g class="edges">{edges}</g><g class="boxes">{nodes}</g></svg>'
    )
