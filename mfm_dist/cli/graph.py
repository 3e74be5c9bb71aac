"""Rendering a flattened plan as text, Mermaid or Graphviz DOT (`mfm graph`).

States appear in canonical order and edges in canonical order of their ends, so
the same plan always renders to the same text.
"""

from __future__ import annotations

import json

from mfm_dist.plan import ExecutionPlan

FORMATS = ("text", "mermaid", "dot")


def plan_edges(plan: ExecutionPlan) -> list[tuple[int, int]]:
    """Distinct edges as canonical positions, sorted."""
    compiled = plan.compiled
    return sorted({(a, b) for b, preds in enumerate(compiled.preds) for a in preds})


def plan_tags(plan: ExecutionPlan) -> list[list[str]]:
    compiled = plan.compiled
    return [list(state.meta().tags) for state in compiled.states]


def render_text(plan: ExecutionPlan) -> str:
    compiled = plan.compiled
    tags = plan_tags(plan)
    edges = plan_edges(plan)
    lines = [f"plan {plan.op_id}: {len(compiled)} states, {len(edges)} edges"]
    width = len(str(len(compiled)))
    for i, sid in enumerate(compiled.order):
        tag_text = f"  [{', '.join(tags[i])}]" if tags[i] else ""
        lines.append(f"{i + 1:>{width}}. {sid}{tag_text}")
        preds = sorted(compiled.preds[i])
        if preds:
            after = ", ".join(str(compiled.order[p]) for p in preds)
            lines.append(" " * (width + 2) + f"after: {after}")
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    return text.replace('"', "#quot;")


def render_mermaid(plan: ExecutionPlan) -> str:
    compiled = plan.compiled
    tags = plan_tags(plan)
    lines = ["flowchart TD"]
    for i, sid in enumerate(compiled.order):
        label = str(sid) + (f"<br/>[{', '.join(tags[i])}]" if tags[i] else "")
        lines.append(f'    s{i}["{_mermaid_label(label)}"]')
    for a, b in plan_edges(plan):
        lines.append(f"    s{a} --> s{b}")
    return "\n".join(lines) + "\n"


def _dot_string(text: str) -> str:
    # A JSON string literal is a valid DOT quoted string for our id/tag alphabet.
    return json.dumps(text)


def render_dot(plan: ExecutionPlan) -> str:
    compiled = plan.compiled
    tags = plan_tags(plan)
    lines = [f"digraph {_dot_string(str(plan.op_id))} {{", "    node [shape=box];"]
    for i, sid in enumerate(compiled.order):
        label = _dot_string(str(sid))
        if tags[i]:
            # Join two quoted strings with DOT's own line break escape.
            label = label[:-1] + "\\n" + _dot_string(f"[{', '.join(tags[i])}]")[1:]
        lines.append(f"    {_dot_string(str(sid))} [label={label}];")
    for a, b in plan_edges(plan):
        lines.append(
            f"    {_dot_string(str(compiled.order[a]))} -> {_dot_string(str(compiled.order[b]))};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_plan(plan: ExecutionPlan, fmt: str) -> str:
    if fmt == "mermaid":
        return render_mermaid(plan)
    if fmt == "dot":
        return render_dot(plan)
    return render_text(plan)
