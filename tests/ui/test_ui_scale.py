"""A 10,000-state run's page in a real browser: every state a square, the drawing summarised
(the 9,999 items one box, with their statuses as a bar), the data the page carries compact,
and the colours following the run live — the join's box turning blue when it is entered and
green when it completes.

The run's history is written straight into an embedded store (a fan-out of 9,999 items, all
completed, and its join still pending): what a real run leaves, without the minutes of
executing it. How long the page takes is measured by `scripts/bench_ui.py`, not here."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from mfm_dist.events import (
    EventDraft,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
)
from mfm_dist.ids import RunId, StateId
from mfm_dist.stores.urls import open_stores
from support.big_runs import write_fanout_run
from support.ui_helpers import chromium_driver, dashboard_for, serve_dashboard, wait_for

pytestmark = pytest.mark.slow

STATES = 10_000
JOIN = StateId("fanout_demo.main.join")


def now() -> int:
    return int(time.time() * 1000)


def join_box(browser: Any) -> str:
    box = browser.find_element(By.CSS_SELECTOR, '#dag g.n[data-state="fanout_demo.main.join"]')
    return str(box.get_attribute("class"))


def test_a_10000_state_run_page_is_complete_compact_and_live(tmp_path: Path) -> None:
    home = tmp_path / ".mfm"
    stores = open_stores(home=str(home))
    rid = RunId(write_fanout_run(stores, STATES, finished=False))
    started = stores.events.read_range(rid, 1, 1)[0].event
    assert isinstance(started, RunStarted)
    base = started.initial_snapshot_id
    browser = chromium_driver()
    try:
        with serve_dashboard(dashboard_for(home=str(home))) as url:
            browser.get(f"{url}/runs/{rid}")
            squares = browser.execute_script("return document.querySelectorAll('#graph i').length")
            assert squares == STATES
            groups = browser.find_elements(By.CSS_SELECTOR, "#dag g.grp")
            assert [g.get_attribute("data-size") for g in groups] == ["9999"]
            assert groups[0].find_element(By.CSS_SELECTOR, "text.gc").text == "9,999/9,999 done"
            assert len(browser.find_elements(By.CSS_SELECTOR, "#dag g.n")) == 1
            assert join_box(browser) == "n P"
            data = json.loads(
                browser.find_element(By.ID, "graph-data").get_attribute("textContent")
            )
            assert data["rows"] == [[[0, 9999]], [[9999, 1]]]
            assert data["groups"] == {"0": [[0, 9999]]} and data["prefix"] == "fanout_demo.main."

            entered = StateEntered(state_id=JOIN, attempt=0, base_snapshot_id=base)
            stores.events.append_next(
                rid, [EventDraft(event=entered, ts_millis=now(), state_id=JOIN, attempt=0)]
            )
            wait_for(lambda: join_box(browser) == "n R", "the join's box to turn running")
            done = StateCompleted(state_id=JOIN, context_snapshot_id=base)
            stores.events.append_next(
                rid,
                [
                    EventDraft(event=done, ts_millis=now(), state_id=JOIN, attempt=0),
                    EventDraft(
                        event=RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=base),
                        ts_millis=now(),
                    ),
                ],
            )
            wait_for(lambda: join_box(browser) == "n C", "the join's box to turn completed")
            wait_for(lambda: browser.find_element(By.ID, "phase").text == "Completed", "the end")
            last = browser.find_elements(By.CSS_SELECTOR, "#graph i")[-1]
            assert last.get_attribute("class") == "C"
    finally:
        browser.quit()
        stores.close()
