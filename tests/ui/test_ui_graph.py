"""The run page's drawn graph, served: a box per state with the plan's edges, coloured by the
states' statuses; too large a plan not drawn, with its reason, its states still shown as
squares; a run whose plan cannot be re-derived says so. And how the page gets its plan:
once per manifest (runs of one manifest share it), without reading the initial snapshot."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from mfm_dist.ids import RunId
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.urls import Stores, open_stores
from mfm_dist.ui.app import create_app
from support.big_runs import complete_states, start_run
from support.ui_helpers import dashboard_for, mfm_json

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

OPS = ("support.ui_ops",)


@pytest.fixture
def stores(tmp_path: Path) -> Stores:
    return open_stores(home=str(tmp_path / ".mfm"))


def registry() -> OperationRegistry:
    return OperationRegistry.default(OPS)


def page(client: TestClient, rid: str) -> str:
    response = client.get(f"/runs/{rid}")
    assert response.status_code == 200, response.text
    return str(response.text)


def boxes(html: str) -> dict[str, tuple[str, str]]:
    """The drawing's state boxes: state id -> (status letter, box key)."""
    found = re.findall(
        r'<g class="n ([A-Z])[^"]*" data-box="(\d+)" data-i="\d+" data-state="([^"]+)"', html
    )
    return {state: (letter, key) for letter, key, state in found}


def edges(html: str) -> set[tuple[str, str]]:
    keys = {key: state for state, (_, key) in boxes(html).items()}
    found = re.findall(r'<path class="e" data-from="(\d+)" data-to="(\d+)"', html)
    return {(keys[a], keys[b]) for a, b in found}


def graph_data(html: str) -> dict[str, object]:
    text = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html)
    assert text is not None
    data: dict[str, object] = json.loads(text.group(1))
    return data


def test_a_small_run_is_drawn_a_box_per_state_coloured_by_status(
    stores: Stores, tmp_path: Path
) -> None:
    rid, base, order = start_run(stores, registry(), "lattice", {"levels": 3, "width": 3})
    client = TestClient(create_app(dashboard_for(home=str(tmp_path / ".mfm"), ops_modules=OPS)))
    html = page(client, rid)
    drawn = boxes(html)
    assert sorted(drawn) == sorted(order)
    assert {letter for letter, _ in drawn.values()} == {"P"}
    plan = {
        (before, after)
        for after in order
        for before in order
        if int(after.split(".")[-1][1:3]) == int(before.split(".")[-1][1:3]) + 1
    }
    assert edges(html) == plan and len(plan) == 18
    data = graph_data(html)
    assert data["prefix"] == "lattice.main." and len(data["rests"]) == 9  # type: ignore[arg-type]
    assert data["rows"] == [[[0, 3]], [[3, 3]], [[6, 3]]] and data["groups"] == {}

    complete_states(stores, rid, base, order[:4])
    html = page(client, rid)  # the cached view is brought up to date
    assert [boxes(html)[s][0] for s in order] == ["C"] * 4 + ["P"] * 5
    live = client.get(f"/api/runs/{rid}/live").json()
    assert live["statuses"] == "CCCCPPPPP"


def test_too_large_a_plan_is_not_drawn_and_the_page_says_why(
    stores: Stores, tmp_path: Path
) -> None:
    rid, _, order = start_run(stores, registry(), "lattice", {"levels": 30, "width": 20})
    client = TestClient(create_app(dashboard_for(home=str(tmp_path / ".mfm"), ops_modules=OPS)))
    html = page(client, rid)
    assert 'id="dag"' not in html
    reason = re.search(r'<p class="muted" id="dag-not-drawn">([^<]*)</p>', html)
    assert reason is not None and "600 states need 600 boxes" in reason.group(1)
    assert html.count("<i class=P></i>") == len(order) == 600  # every state as a square


def test_a_run_whose_plan_is_unavailable_is_not_drawn(stores: Stores, tmp_path: Path) -> None:
    rid, base, order = start_run(stores, registry(), "lattice", {"levels": 2, "width": 2})
    complete_states(stores, rid, base, order[:1])
    without_ops = TestClient(create_app(dashboard_for(home=str(tmp_path / ".mfm"))))
    html = page(without_ops, rid)
    assert "plan unavailable (operation_not_found)" in html
    assert "not drawn: the plan is unavailable (operation_not_found)" in html
    assert html.count("<i class=C></i>") == 1  # the states of the history, as squares


def test_runs_of_one_manifest_share_one_plan_and_the_page_reads_no_snapshot(
    stores: Stores, tmp_path: Path
) -> None:
    home = tmp_path / ".mfm"
    first, base, order = start_run(stores, registry(), "lattice", {"levels": 2, "width": 3})
    second, _, _ = start_run(stores, registry(), "lattice", {"levels": 2, "width": 3})
    dashboard = dashboard_for(home=str(home), ops_modules=OPS)
    assert dashboard.view(RunId(first)).shape is dashboard.view(RunId(second)).shape
    assert dashboard.view(RunId(first)).plan_s is not None  # derived for the first run …
    assert dashboard.view(RunId(second)).plan_s is None  # … and reused for the second
    assert isinstance(stores.artifacts, FileArtifactStore)
    stores.artifacts.object_path(str(base)).unlink()  # the initial snapshot, gone
    client = TestClient(create_app(dashboard_for(home=str(home), ops_modules=OPS)))
    assert sorted(boxes(page(client, first))) == sorted(order)
    verdict = mfm_json(["--home", str(home), "--ops", OPS[0]], "verify", first, "--json")
    assert verdict["ok"] is False  # verify reads it, and misses it
