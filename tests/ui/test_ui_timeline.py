"""The attempt timeline with what it must tell apart: a handler's retryable failure and the
backoff before its retry, an orphaned attempt recovered (its worker died) and retried, and
the completed attempts — in the API (`/api/runs/RUN/attempts`) and as drawn in the browser.

The history is written straight into an embedded store: a crash and a retry with a backoff,
at known times, without waiting for them."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.by import By

from mfm_dist.config import Duration, FixedBackoff, RetryPolicy, RunConfig
from mfm_dist.engine.progress import orphan_error
from mfm_dist.errors import ErrorCategory, ErrorInfo
from mfm_dist.events import (
    EventDraft,
    RunCompleted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.operations import OperationRegistry
from mfm_dist.stores.urls import open_stores
from support.big_runs import start_run
from support.ui_helpers import chromium_driver, dashboard_for, get_json, serve_dashboard, wait_for

BACKOFF_MS = 500


def test_retries_backoffs_and_orphan_recoveries(tmp_path: Path) -> None:
    home = tmp_path / ".mfm"
    stores = open_stores(home=str(home))
    config = RunConfig(
        retry_policy=RetryPolicy(
            max_attempts=3, backoff=FixedBackoff(delay=Duration.from_millis(BACKOFF_MS))
        )
    )
    rid, base, (first, second) = start_run(
        stores, OperationRegistry.default(), "chain_demo", {"states": 2}, config
    )
    failure = ErrorInfo(
        code="upstream_unavailable",
        category=ErrorCategory.UNKNOWN,
        retryable=True,
        message="try again",
    )
    t = stores.events.read_range(rid, 1, 1)[0].ts_millis  # the run's start

    def entered(state: str, attempt: int, at: int) -> EventDraft:
        event = StateEntered(state_id=state, attempt=attempt, base_snapshot_id=base)
        return EventDraft(event=event, ts_millis=t + at, state_id=state, attempt=attempt)

    def closed(state: str, attempt: int, at: int, error: ErrorInfo | None = None) -> EventDraft:
        event = (
            StateCompleted(state_id=state, context_snapshot_id=base)
            if error is None
            else StateFailed(state_id=state, error=error)
        )
        return EventDraft(event=event, ts_millis=t + at, state_id=state, attempt=attempt)

    history = [
        entered(first, 0, 0),
        closed(first, 0, 100, failure),
        entered(first, 1, 100 + BACKOFF_MS),
        closed(first, 1, 700),
        entered(second, 0, 800),
        closed(second, 0, 4000, orphan_error("when the run resumed")),
        entered(second, 1, 4000),
        closed(second, 1, 4100),
        EventDraft(
            event=RunCompleted(status=RunStatus.COMPLETED, final_snapshot_id=base),
            ts_millis=t + 4200,
        ),
    ]
    stores.events.append_next(rid, history)
    stores.close()

    with serve_dashboard(dashboard_for(home=str(home))) as url:
        timeline = get_json(f"{url}/api/runs/{rid}/attempts")
        rows = [
            (a["state_id"], a["attempt"], a["outcome"], a["error_code"], a["retry_at_ms"])
            for a in timeline["attempts"]
        ]
        assert rows == [
            (first, 0, "failed", "upstream_unavailable", t + 100 + BACKOFF_MS),
            (first, 1, "completed", None, None),
            (second, 0, "failed", "orphan_attempt_recovered", t + 4000 + BACKOFF_MS),
            (second, 1, "completed", None, None),
        ]
        assert timeline["started_ms"] == t and timeline["ended_ms"] == t + 4200

        browser = chromium_driver()
        try:
            browser.get(f"{url}/runs/{rid}#timeline")
            bars = wait_for(
                lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.bar"),
                "the timeline",
            )
            kinds = sorted(b.get_attribute("class").split()[1] for b in bars)
            assert kinds == ["bar-completed", "bar-completed", "bar-failed", "bar-orphan"]
            hatched = browser.find_elements(By.CSS_SELECTOR, "#timeline-svg rect.backoff")
            assert len(hatched) == 2
        finally:
            browser.quit()
