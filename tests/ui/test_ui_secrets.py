"""No page or endpoint of the dashboard ever shows a secret-shaped value. mfm-dist never
stores one (docs/secrets.md), so this test writes a history the runtime would refuse —
straight into the stores — with secrets in labels, a domain event, an error code and
message, and the context snapshots; then reads every page and endpoint."""

from __future__ import annotations

import json
import warnings
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from mfm_dist.artifacts import ArtifactKind
from mfm_dist.config import RunConfig
from mfm_dist.engine.lifecycle import (
    prepare_run,
    record_run_start,
    stored_and_validated,
)
from mfm_dist.errors import ErrorCategory, ErrorInfo
from mfm_dist.events import (
    DomainEvent,
    EventDraft,
    RunCompleted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, StateId
from mfm_dist.operations import OperationRegistry
from mfm_dist.secrets import contains_secret, is_secret_string
from mfm_dist.stores.urls import open_stores
from mfm_dist.ui.app import create_app
from support.ui_helpers import dashboard_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

LEAKS = ("hunter2", "tok-123", "abandon ability able", "sk_live_42")
MNEMONIC = " ".join(["abandon", "ability", "able"] * 4)


def secret_history(home: Path) -> tuple[str, str]:
    """A failed two-state run full of secret-shaped values; (run id, snapshot id)."""
    stores = open_stores(home=str(home))
    events, artifacts = stores.events, stores.artifacts
    prepared = prepare_run(OperationRegistry.default(), "fanout_demo", {"items": 2}, RunConfig())
    manifest_id, initial = stored_and_validated(artifacts, prepared)
    rid, initial_id = record_run_start(
        events, artifacts, plan=prepared.plan, manifest_id=manifest_id, initial_snapshot=initial
    )
    leaky = {
        "input": {"items": 2},
        "item_0000": {"password": "hunter2", "note": "Bearer tok-123"},
        "words": MNEMONIC,
        "api_key": "sk_live_42",
    }
    snapshot = artifacts.put(
        ArtifactKind.CONTEXT_SNAPSHOT, orjson.dumps(leaky, option=orjson.OPT_SORT_KEYS)
    )
    s0, s1 = StateId("fanout_demo.main.item_0000"), StateId("fanout_demo.main.item_0001")
    error = ErrorInfo(
        code="api_key_rejected",
        category=ErrorCategory.UNKNOWN,
        retryable=False,
        message="Authorization: Bearer tok-123 refused",
    )
    # fmt: off
    drafts = [
        EventDraft(event=DomainEvent(name="run_submitted", payload={
            "fingerprint": "0" * 64, "idempotency_key": None,
            "labels": {"password": "hunter2", "team": MNEMONIC},
            "on_complete": None, "submitted_ms": 1,
        }), ts_millis=1),
        EventDraft(event=StateEntered(state_id=s0, attempt=0, base_snapshot_id=initial_id),
                   ts_millis=2, state_id=s0, attempt=0),
        EventDraft(event=DomainEvent(name="leak", payload={"token": "Bearer tok-123"}),
                   ts_millis=3, state_id=s0, attempt=0),
        EventDraft(event=StateCompleted(state_id=s0, context_snapshot_id=ArtifactId(snapshot)),
                   ts_millis=4, state_id=s0, attempt=0),
        EventDraft(event=StateEntered(state_id=s1, attempt=0, base_snapshot_id=initial_id),
                   ts_millis=5, state_id=s1, attempt=0),
        EventDraft(event=StateFailed(state_id=s1, error=error, failure_snapshot_id=None),
                   ts_millis=6, state_id=s1, attempt=0),
        EventDraft(event=RunCompleted(status=RunStatus.FAILED,
                                      final_snapshot_id=ArtifactId(snapshot)), ts_millis=7),
    ]
    # fmt: on
    for draft in drafts:
        events.append_next(rid, [draft])
    stores.close()
    return str(rid), str(snapshot)


class _Texts(HTMLParser):
    """Every text node and attribute value of a page (what a person or a script sees)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.texts.extend(v for _, v in attrs if v)

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(data)


def assert_nothing_secret(url: str, body: bytes, content_type: str) -> None:
    text = body.decode("utf-8", errors="replace")
    for leak in LEAKS:
        assert leak not in text, (url, leak)
    if content_type.startswith("application/json"):
        assert not contains_secret(json.loads(text)), url
    elif content_type.startswith("text/html"):
        parser = _Texts()
        parser.feed(text)
        shown = [t for t in parser.texts if is_secret_string(t)]
        assert not shown, (url, shown)
    else:
        assert not is_secret_string(text), url


def test_no_page_or_endpoint_shows_a_secret(tmp_path: Path) -> None:
    home = tmp_path / ".mfm"
    rid, snapshot = secret_history(home)
    client = TestClient(create_app(dashboard_for(home=str(home))))
    urls = [
        "/", "/?phase=Failed", f"/runs/{rid}", "/ops", "/backfills", "/metrics",
        "/api/runs", f"/api/runs/{rid}", f"/api/runs/{rid}/live",
        f"/api/runs/{rid}/events?limit=500", f"/api/runs/{rid}/attempts",
        f"/api/runs/{rid}/states/item_0000", f"/api/runs/{rid}/states/item_0001",
        f"/api/runs/{rid}/verify", f"/api/runs/{rid}/replay", f"/api/runs/{rid}/context",
        f"/api/runs/{rid}/context?state=item_0000", f"/api/artifacts/{snapshot}",
        "/api/ops", "/api/backfills",
    ]  # fmt: skip
    statuses = {}
    for url in urls:
        response = client.get(url)
        statuses[url] = response.status_code
        assert response.status_code < 500 or url.endswith(("/verify", "/replay")), (
            url,
            response.text,
        )
        assert_nothing_secret(url, response.content, response.headers["content-type"])
    # The stored values were there to be shown: they were withheld, not missing.
    assert statuses[f"/api/artifacts/{snapshot}"] == 403
    assert statuses[f"/api/runs/{rid}/context"] == 403
    assert statuses[f"/runs/{rid}"] == 200
    page = client.get(f"/runs/{rid}").text
    assert "&lt;redacted&gt;" in page  # the error code and message
    events = client.get(f"/api/runs/{rid}/events?limit=500").json()
    assert "<redacted>" in json.dumps(events)
    detail = client.get(f"/api/runs/{rid}/states/item_0000").json()
    assert detail["delta"] is None and detail["delta_error"]["code"] == "secrets_detected"
    assert detail["events"][0]["payload"] == {"token": "<redacted>"}


@pytest.mark.parametrize("value", ["password", "x-api-key", MNEMONIC, "Bearer abc"])
def test_scrub_and_shown(value: str) -> None:
    from mfm_dist.ui.safety import REDACTED, scrub, shown

    assert shown(value) == REDACTED and shown("fine") == "fine"
    assert not contains_secret(scrub({value: [value, {"k": value}], "ok": 1}))
