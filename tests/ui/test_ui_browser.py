"""The dashboard in a real browser (headless Chromium + Selenium): the runs list filters, a
live run's graph — the drawing and the squares — changing colour as its states complete, the
drawing's boxes and edges against the plan, a group of states, a failed state's error code,
a backfill's counts. The README's screenshots (docs/images/) are taken here."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from mfm_dist import api
from support.slow_ops import SlowFanOut
from support.ui_helpers import (
    SCREENSHOTS,
    chromium_driver,
    dashboard_for,
    get_json,
    mfm,
    mfm_json,
    serve_dashboard,
    wait_for,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ui-browser") / ".mfm"
    g = ["--home", str(home)]
    assert mfm(g, "run", "fanout_demo", "--input", '{"items": 40}', "--fan-out", "4",
               "--label", "team=data").exit_code == 0  # fmt: skip
    assert mfm(g, "run", "flaky_demo", "--label", "team=ops").exit_code == 1
    assert mfm(g, "run", "flaky_demo", "--max-attempts", "2", "--label", "team=ops").exit_code == 0
    assert mfm(g, "run", "etl_demo").exit_code == 0
    parts = home.parent / "parts.jsonl"
    lines = [{"day": f"2026-01-{d:02d}", **({"fail": True} if d in (3, 7) else {})}
             for d in range(1, 11)]  # fmt: skip
    parts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    created = mfm(g, "backfill", "create", "partition_demo", "--name", "january",
                  "--file", str(parts), "--field", "day")  # fmt: skip
    assert created.exit_code == 1, created.output
    return home


@pytest.fixture(scope="module")
def url(home: Path) -> Iterator[str]:
    with serve_dashboard(dashboard_for(home=str(home), ops_modules=("support.slow_ops",))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium_driver()
    yield driver
    driver.quit()


SHOTS = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else None
"""The README's screenshots are refreshed only on request (`UPDATE_SCREENSHOTS=1 pytest
tests/ui/test_ui_browser.py`); an ordinary run takes them into a temporary directory, so the
suite never leaves the checkout modified."""


def shot(browser: Any, name: str) -> None:
    folder = SHOTS or Path(tempfile.mkdtemp(prefix="mfm-screens-"))
    folder.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(folder / name))
    assert (folder / name).stat().st_size > 0


def rows(browser: Any) -> list[Any]:
    found: list[Any] = browser.find_elements(By.CSS_SELECTOR, "#runs tr.run-row")
    return found


def apply(browser: Any, **fields: str) -> None:
    for name, value in fields.items():
        element = browser.find_element(By.ID, f"f-{name}")
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value)
    navigate(browser, lambda: browser.find_element(By.ID, "f-apply").click())


def navigate(browser: Any, action: Any) -> None:
    """Do `action` and wait until the browser shows the page it leads to.

    The old document is marked with a window property a new document lacks. Waiting on element
    staleness instead is racy in chromium: mid-navigation it may answer "node does not belong to
    the document" (a WebDriverException, not a StaleElementReferenceException)."""
    browser.execute_script("window.__mfmOldPage = true;")
    action()

    def arrived(driver: Any) -> bool:
        state = driver.execute_script(
            "return window.__mfmOldPage === true ? 'old' : document.readyState;"
        )
        return bool(state == "complete")

    WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,)).until(arrived)


def clear(browser: Any) -> None:
    navigate(browser, lambda: browser.find_element(By.ID, "f-clear").click())


def test_runs_list_filters(browser: Any, url: str, home: Path) -> None:
    browser.get(url + "/")
    everything = mfm_json(["--home", str(home)], "runs", "--json")
    assert len(rows(browser)) == len(everything) == 14
    shown = [r.get_attribute("data-run") for r in rows(browser)]
    assert shown == [r["run_id"] for r in everything]
    # short ids link to the run
    first = rows(browser)[0].find_element(By.CSS_SELECTOR, "a.rid")
    assert len(first.text) == 8 and first.get_attribute("title") == shown[0]
    shot(browser, "dashboard-runs.png")

    apply(browser, op="flaky_demo")
    assert {r.get_attribute("data-phase") for r in rows(browser)} == {"Failed", "Completed"}
    assert len(rows(browser)) == 2
    apply(browser, phase="Failed")
    assert [r.get_attribute("data-phase") for r in rows(browser)] == ["Failed"]
    clear(browser)
    apply(browser, label="team=data")
    assert len(rows(browser)) == 1
    clear(browser)
    apply(browser, backfill="january")
    assert len(rows(browser)) == 10
    apply(browser, phase="Failed")
    assert len(rows(browser)) == 2
    clear(browser)
    apply(browser, since="2000-01-01", until="2001-01-01")
    assert rows(browser) == [] and browser.find_element(By.ID, "no-runs")
    # a label chip filters by its label
    browser.get(url + "/?op=partition_demo&limit=20")
    assert len(rows(browser)) == 10
    chips = browser.find_elements(By.CSS_SELECTOR, "a.label")
    partition = next(c for c in chips if c.text.startswith("partition="))
    navigate(browser, partition.click)
    assert len(rows(browser)) == 1  # partition=… is unique


def test_paging(browser: Any, url: str, home: Path) -> None:
    everything = [r["run_id"] for r in mfm_json(["--home", str(home)], "runs", "--json")]
    browser.get(url + "/?limit=20")
    seen = [r.get_attribute("data-run") for r in rows(browser)]
    while browser.find_elements(By.ID, "next-page"):
        navigate(browser, lambda: browser.find_element(By.ID, "next-page").click())
        seen += [r.get_attribute("data-run") for r in rows(browser)]
    assert seen == everything  # one page: 14 runs
    browser.get(url + "/?op=partition_demo")
    Select(browser.find_element(By.ID, "f-limit"))  # the page-size control is there
    browser.get(url + "/?op=partition_demo&limit=4")
    pages = []
    while True:
        pages.append([r.get_attribute("data-run") for r in rows(browser)])
        if not browser.find_elements(By.ID, "next-page"):
            break
        navigate(browser, lambda: browser.find_element(By.ID, "next-page").click())
    assert [len(p) for p in pages] == [4, 4, 2]
    listed = [r for page in pages for r in page]
    assert listed == [r for r in everything if r in listed]
    assert len(set(listed)) == 10


def test_failed_state_shows_its_error_code(browser: Any, url: str, home: Path) -> None:
    failed = mfm_json(["--home", str(home)], "runs", "--json", "--op", "flaky_demo",
                      "--phase", "Failed")[0]["run_id"]  # fmt: skip
    browser.get(f"{url}/runs/{failed[:8]}")  # a prefix redirects to the run
    assert browser.current_url.endswith(f"/runs/{failed}")
    assert "upstream_unavailable" in browser.find_element(By.ID, "run-error").text
    table = browser.find_element(By.ID, "failed").text
    assert "flaky_demo.main.call_upstream" in table and "upstream_unavailable" in table
    cells = browser.find_elements(By.CSS_SELECTOR, "#graph i")
    assert [c.get_attribute("class") for c in cells] == ["C", "F"]
    drawn = {b.get_attribute("data-state"): b.get_attribute("class")
             for b in browser.find_elements(By.CSS_SELECTOR, "#dag g.n")}  # fmt: skip
    assert drawn == {"flaky_demo.main.prepare": "n C", "flaky_demo.main.call_upstream": "n F"}
    browser.find_element(By.CSS_SELECTOR, '#dag g.n[data-state$="call_upstream"]').click()
    code = wait_for(lambda: browser.find_elements(By.ID, "detail-error-code"), "the detail")
    assert code[0].text == "upstream_unavailable"
    assert browser.find_element(By.ID, "detail-status").text == "failed"
    assert "sel" in cells[1].get_attribute("class")  # its square is marked too
    shot(browser, "dashboard-failed-state.png")


def test_live_graph_changes_colour(browser: Any, url: str, home: Path) -> None:
    done: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: done.setdefault(
            "result",
            api.run(SlowFanOut(), {"items": 12, "sleep_ms": 400}, fan_out=3, home=str(home)),
        )
    )
    thread.start()
    try:
        # fmt: off
        rid = wait_for(
            lambda: next(
                (r["run_id"] for r in mfm_json(["--home", str(home)], "runs", "--json",
                                               "--op", "slow_fanout")),
                None,
            ),
            "the run to start",
        )
        # fmt: on
        browser.get(f"{url}/runs/{rid}")
        check_drawing_against_plan(browser, url, rid)

        def classes() -> list[str]:
            return [c.get_attribute("class")[0] for c in
                    browser.find_elements(By.CSS_SELECTOR, "#graph i")]  # fmt: skip

        def drawn() -> list[str]:
            return [b.get_attribute("class").split()[1] for b in
                    browser.find_elements(By.CSS_SELECTOR, "#dag g.n")]  # fmt: skip

        squares, boxes = browser.execute_script(  # both at one moment: a poll updates both
            "return [Array.from(document.querySelectorAll('#graph i'), e => e.className[0]),"
            " Array.from(document.querySelectorAll('#dag g.n'),"
            " e => e.getAttribute('class').split(' ')[1])];"
        )
        assert len(squares) == 13 and squares.count("C") < 13
        assert sorted(boxes) == sorted(squares)  # one box per state, the same colours
        assert browser.find_element(By.ID, "phase").text == "Running"
        wait_for(lambda: "R" in drawn() and "C" in drawn(), "boxes done and boxes running")
        wait_for(lambda: "R" in classes() and "C" in classes(), "some states done, some running")
        shot(browser, "dashboard-run-live.png")
        wait_for(lambda: drawn() == ["C"] * 13, "every box to turn green", timeout_s=30)
        wait_for(lambda: classes() == ["C"] * 13, "every state to turn green", timeout_s=30)
        wait_for(lambda: browser.find_element(By.ID, "phase").text == "Completed", "the phase")
        # shown in place, no reload: the duration is final
        wait_for(lambda: not browser.find_element(By.ID, "duration").text.endswith("+"), "end")
    finally:
        thread.join(timeout=60)
    assert done["result"].phase.value == "Completed"
    browser.find_element(By.CSS_SELECTOR, "a[data-tab=timeline]").click()
    bars = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.bar"),
                    "the timeline")  # fmt: skip
    assert len(bars) == 13
    shot(browser, "dashboard-timeline.png")
    browser.find_element(By.CSS_SELECTOR, "a[data-tab=events]").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#events tbody tr"), "events")
    assert browser.find_element(By.ID, "ev-range").text.startswith("1–")
    browser.find_element(By.CSS_SELECTOR, "a[data-tab=verify]").click()
    browser.find_element(By.ID, "do-verify").click()
    outcome = wait_for(lambda: browser.find_elements(By.ID, "verify-outcome"), "verify")
    assert outcome[0].text == "verified"


def check_drawing_against_plan(browser: Any, url: str, rid: str) -> None:
    """The drawing has one box per state of the run and one edge per dependency of its plan
    (each state's predecessors, as the API gives them)."""
    states = [s["state_id"] for s in get_json(f"{url}/api/runs/{rid}")["states"]]
    boxes = {b.get_attribute("data-box"): b.get_attribute("data-state")
             for b in browser.find_elements(By.CSS_SELECTOR, "#dag g.n")}  # fmt: skip
    assert sorted(boxes.values()) == sorted(states)
    drawn = {(boxes[e.get_attribute("data-from")], boxes[e.get_attribute("data-to")])
             for e in browser.find_elements(By.CSS_SELECTOR, "#dag path.e")}  # fmt: skip
    preds = {s: get_json(f"{url}/api/runs/{rid}/states/{s}")["predecessors"] for s in states}
    plan = {(before, state) for state in states for before in preds[state]}
    assert drawn == plan and len(plan) == 12


def test_a_wide_level_is_drawn_as_a_group(browser: Any, url: str, home: Path) -> None:
    rid = mfm_json(["--home", str(home)], "runs", "--json", "--op", "fanout_demo")[0]["run_id"]
    browser.get(f"{url}/runs/{rid}")
    group = browser.find_element(By.CSS_SELECTOR, "#dag g.grp")
    assert group.get_attribute("data-size") == "40" and group.get_attribute("data-kind") == "family"
    assert group.find_element(By.CSS_SELECTOR, "text.gc").text == "40/40 done"
    bar = {r.get_attribute("class"): int(r.get_attribute("width"))
           for r in group.find_elements(By.CSS_SELECTOR, "g.bar rect")}  # fmt: skip
    assert bar["C"] == 160 and sum(bar.values()) == 160
    assert [
        b.get_attribute("data-state") for b in browser.find_elements(By.CSS_SELECTOR, "#dag g.n")
    ] == ["fanout_demo.main.join"]
    edge = browser.find_element(By.CSS_SELECTOR, "#dag path.e")
    assert edge.get_attribute("data-count") == "40"
    group.click()
    title = wait_for(lambda: browser.find_elements(By.ID, "detail-group"), "the group's detail")
    assert title[0].text == "40 states"
    assert browser.find_element(By.ID, "group-counts").text.strip() == "40 completed"
    links = browser.find_elements(By.CSS_SELECTOR, "#detail-body .group-list a.state-link")
    assert len(links) == 40 and links[3].text == "fanout_demo.main.item_0003"
    links[3].click()
    shown = wait_for(lambda: browser.find_elements(By.ID, "detail-state"), "the state's detail")
    assert shown[0].text == "fanout_demo.main.item_0003"


def test_backfill_page_counts(browser: Any, url: str) -> None:
    browser.get(url + "/backfills")
    row = browser.find_element(By.CSS_SELECTOR, "tr.bf-row[data-name=january]")
    assert "8/10" not in row.text and "10/10" in row.text
    navigate(browser, lambda: row.find_element(By.TAG_NAME, "a").click())
    counts = {
        b.get_attribute("data-count"): int(b.text)
        for b in browser.find_elements(By.CSS_SELECTOR, "#bf-counts b")
    }
    assert counts["completed"] == 8 and counts["failed"] == 2 and counts["pending"] == 0
    failed = browser.find_element(By.ID, "bf-failed").text
    assert "2026-01-03" in failed and "2026-01-07" in failed and "partition_failed" in failed
    shot(browser, "dashboard-backfill.png")
    navigate(browser, lambda: browser.find_element(By.ID, "bf-runs").click())
    assert len(rows(browser)) == 10
