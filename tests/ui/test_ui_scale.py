"""A 10,000-state run's page in a real browser: how long until its graph is on screen.

The run's history is written straight into an embedded store (a fan-out/join of 9,999 items
and a join, every state completed: 20,003 events) — what a real run leaves, without the
minutes of executing it. Measured from navigation start to the page's `load` event, on a
fresh server (nothing cached: the history is read and checked, the plan re-derived) and
again (the run cached, as while someone watches it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mfm_dist.config import FanOutJoin, RunConfig
from mfm_dist.engine.lifecycle import prepare_run, record_run_start, store_manifest, validate_start
from mfm_dist.events import EventDraft, RunCompleted, RunStatus, StateCompleted, StateEntered
from mfm_dist.ids import StateId
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.urls import open_stores
from support.ui_helpers import chromium_driver, dashboard_for, serve_dashboard

pytestmark = pytest.mark.slow

STATES = 10_000
BUDGET_S = 2.0


def big_run(home: Path) -> str:
    stores = open_stores(home=str(home))
    config = RunConfig(execution_mode=FanOutJoin(max_concurrency=64))
    prepared = prepare_run(
        OperationRegistry.default(), "fanout_demo", {"items": STATES - 1}, config
    )
    manifest_id = store_manifest(stores.artifacts, prepared.manifest)
    initial = validate_start(
        stores.artifacts,
        plan=prepared.plan,
        run_config=prepared.run_config,
        manifest=prepared.manifest,
        manifest_id=manifest_id,
        initial_context=prepared.initial_context,
    )
    rid, base = record_run_start(
        stores.events, stores.artifacts, plan=prepared.plan, manifest_id=manifest_id,
        initial_snapshot=initial,
    )  # fmt: skip
    ts = int(time.time() * 1000)
    drafts: list[EventDraft] = []
    for state in prepared.plan.canonical_order():
        sid = StateId(str(state))
        drafts.append(EventDraft(event=StateEntered(state_id=sid, attempt=0, base_snapshot_id=base),
                                 ts_millis=ts, state_id=sid, attempt=0))  # fmt: skip
        drafts.append(EventDraft(event=StateCompleted(state_id=sid, context_snapshot_id=base),
                                 ts_millis=ts + 5, state_id=sid, attempt=0))  # fmt: skip
        ts += 1
    drafts.append(EventDraft(event=RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=base),
                             ts_millis=ts))  # fmt: skip
    for k in range(0, len(drafts), 2000):
        stores.events.append_next(rid, drafts[k : k + 2000])
    stores.close()
    return str(rid)


def page_load_s(browser: Any, url: str) -> float:
    browser.get(url)
    timing: list[int] = browser.execute_script(
        "var t = performance.timing; return [t.navigationStart, t.loadEventEnd,"
        " document.querySelectorAll('#graph i').length];"
    )
    assert timing[2] == STATES
    return (timing[1] - timing[0]) / 1000.0


def test_a_10000_state_run_page_renders_quickly(tmp_path: Path) -> None:
    home = tmp_path / ".mfm"
    rid = big_run(home)
    browser = chromium_driver()
    dashboard = dashboard_for(home=str(home))
    dashboard.app.registry()  # as `mfm ui` does before serving
    try:
        with serve_dashboard(dashboard) as url:
            browser.get(url + "/static/ui.css")  # the browser itself is warm
            cold = page_load_s(browser, f"{url}/runs/{rid}")
            warm = min(page_load_s(browser, f"{url}/runs/{rid}") for _ in range(3))
    finally:
        browser.quit()
    print(f"\n10,000-state run page: first view {cold:.2f} s, cached {warm:.2f} s")
    assert warm < BUDGET_S
    assert cold < 4 * BUDGET_S  # a sanity bound: other test suites share the two cores
