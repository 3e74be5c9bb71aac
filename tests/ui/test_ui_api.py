"""The dashboard's JSON API on the embedded stores (SQLite + files) and on the distributed
ones (Redis + S3): every endpoint, with the same shapes as the CLI's `--json` outputs
(compared with the CLI itself, over the same stores)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from support.ui_helpers import dashboard_for, mfm, mfm_json

with warnings.catch_warnings():  # "install httpx2": the test client works with httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from mfm_dist.ui.app import create_app

BACKFILL_VOLATILE = {"elapsed_s", "started_per_s", "completed_per_s", "eta_s"}
OPS = "support.ui_ops"


@dataclass(frozen=True)
class Where:
    """The stores this module's runs are in, as the CLI's global options and as the
    dashboard's."""

    args: list[str]
    stores: dict[str, str]


@pytest.fixture(scope="module", params=["embedded", "redis+s3"])
def home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Where:
    scratch = tmp_path_factory.mktemp("ui-api")
    if request.param == "embedded":
        where = Where(["--home", str(scratch / ".mfm")], {"home": str(scratch / ".mfm")})
    else:
        events = request.getfixturevalue("redis_module_url")
        artifacts = request.getfixturevalue("s3_module_artifacts_url")
        where = Where(
            ["--events-url", events, "--artifacts-url", artifacts],
            {"events_url": events, "artifacts_url": artifacts},
        )
    where.args.extend(["--ops", OPS])
    g = where.args
    assert mfm(g, "run", "fanout_demo", "--input", '{"items": 5}', "--fan-out", "2",
               "--label", "team=data").exit_code == 0  # fmt: skip
    assert mfm(g, "run", "flaky_demo").exit_code == 1
    assert mfm(g, "run", "flaky_demo", "--max-attempts", "2", "--label", "team=ops").exit_code == 0
    assert mfm(g, "run", "etl_demo").exit_code == 0
    assert mfm(g, "run", "stamped").exit_code == 0
    parts = scratch / "parts.jsonl"
    parts.write_text('{"day": "d1"}\n{"day": "d2", "fail": true}\n{"day": "d3"}\n')
    created = mfm(g, "backfill", "create", "partition_demo", "--name", "nightly",
                  "--file", str(parts), "--field", "day")  # fmt: skip
    assert created.exit_code == 1, created.output  # one partition fails for good
    return where


@pytest.fixture(scope="module")
def client(home: Where) -> Iterator[TestClient]:
    yield TestClient(create_app(dashboard_for(**home.stores, ops_modules=(OPS,))))


def g(home: Where) -> list[str]:
    return home.args


def run_ids(home: Where, *filters: str) -> list[str]:
    return [r["run_id"] for r in mfm_json(g(home), "runs", "--json", *filters)]


def get(client: TestClient, url: str, status: int = 200) -> Any:
    response = client.get(url)
    assert response.status_code == status, response.text
    return response.json()


def test_runs_is_the_cli_listing_with_its_filters(client: TestClient, home: Where) -> None:
    assert get(client, "/api/runs") == mfm_json(g(home), "runs", "--json")
    cases = [
        ("op=flaky_demo", ["--op", "flaky_demo"]),
        ("phase=failed", ["--phase", "Failed"]),
        ("label=team%3Dops", ["--label", "team=ops"]),
        ("backfill=nightly", ["--backfill", "nightly"]),
        ("since=1h", ["--since", "1h"]),
        ("until=2000-01-01", ["--until", "2000-01-01"]),
        ("op=flaky_demo&phase=Completed", ["--op", "flaky_demo", "--phase", "Completed"]),
    ]
    for query, args in cases:
        api = get(client, f"/api/runs?{query}")
        assert [r["run_id"] for r in api] == run_ids(home, *args), query
    assert len(get(client, "/api/runs?backfill=nightly")) == 3
    assert get(client, "/api/runs?until=2000-01-01") == []


def test_runs_paging_walks_every_run_once(client: TestClient, home: Where) -> None:
    everything = run_ids(home, "--limit", "0")
    seen: list[str] = []
    url = "/api/runs?limit=2"
    while True:
        response = client.get(url)
        assert response.status_code == 200
        rows = response.json()
        assert len(rows) <= 2
        seen += [r["run_id"] for r in rows]
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
        assert 'rel="next"' in response.headers["link"]
        url = f"/api/runs?limit=2&cursor={cursor}"
    assert seen == everything


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("label=nokey", "label_invalid"),
        ("since=yesterday", "time_invalid"),
        ("phase=Sleeping", "usage"),
        ("limit=0", "usage"),
        ("cursor=garbage", "usage"),
    ],
)
def test_bad_filters_are_400_with_the_cli_codes(client: TestClient, query: str, code: str) -> None:
    assert get(client, f"/api/runs?{query}", 400)["error"]["code"] == code


def test_status_events_context_verify_replay_match_the_cli(client: TestClient, home: Where) -> None:
    for rid in run_ids(home, "--limit", "0"):
        assert get(client, f"/api/runs/{rid}") == mfm_json(g(home), "status", rid, "--json")
        lines = mfm(g(home), "events", rid, "--json").stdout.splitlines()
        assert get(client, f"/api/runs/{rid}/events?limit=500") == [json.loads(x) for x in lines]
        assert get(client, f"/api/runs/{rid}/verify") == mfm_json(g(home), "verify", rid, "--json")
        assert get(client, f"/api/runs/{rid}/replay") == mfm_json(g(home), "replay", rid, "--json")
        status = get(client, f"/api/runs/{rid}")
        if status["final_snapshot_id"]:
            assert get(client, f"/api/runs/{rid}/context") == mfm_json(g(home), "context", rid)
    fanout = run_ids(home, "--op", "fanout_demo")[0]
    assert get(client, f"/api/runs/{fanout}/context?state=item_0003") == mfm_json(
        g(home), "context", fanout, "--state", "item_0003"
    )


def test_events_are_paged(client: TestClient, home: Where) -> None:
    rid = run_ids(home, "--op", "fanout_demo")[0]
    everything = get(client, f"/api/runs/{rid}/events?limit=500")
    response = client.get(f"/api/runs/{rid}/events?from=3&limit=4")
    assert response.json() == everything[2:6]
    assert int(response.headers["x-head-seq"]) == len(everything)
    assert get(client, f"/api/runs/{rid}/events?from=0", 400)["error"]["code"] == "usage"


def test_ids_by_prefix_and_unknown_runs(client: TestClient, home: Where) -> None:
    rid = run_ids(home, "--op", "etl_demo")[0]
    assert get(client, f"/api/runs/{rid[:8]}")["run_id"] == rid
    assert get(client, f"/api/runs/{rid[:4]}", 400)["error"]["code"] == "id_prefix_too_short"
    missing = "00000000-0000-4000-8000-000000000000"
    assert get(client, f"/api/runs/{missing}", 404)["error"]["code"] == "run_not_found"
    assert get(client, f"/api/runs/{missing}/live", 404)["error"]["code"] == "run_not_found"


def test_live_view_of_a_failed_run_names_the_code(client: TestClient, home: Where) -> None:
    rid = run_ids(home, "--op", "flaky_demo", "--phase", "Failed")[0]
    live = get(client, f"/api/runs/{rid}/live")
    status = get(client, f"/api/runs/{rid}")
    assert live["phase"] == "Failed" and live["counts"] == status["counts"]
    assert live["statuses"] == "CF"
    assert live["error_codes"] == {"1": "upstream_unavailable"}
    assert live["error"]["code"] == "upstream_unavailable"


def test_state_detail_has_attempts_delta_and_neighbours(client: TestClient, home: Where) -> None:
    rid = run_ids(home, "--op", "flaky_demo", "--phase", "Completed")[0]
    d = get(client, f"/api/runs/{rid}/states/call_upstream")
    assert d["state_id"] == "flaky_demo.main.call_upstream"
    assert [a["outcome"] for a in d["attempts"]] == ["failed", "completed"]
    assert d["attempts"][0]["error"]["code"] == "upstream_unavailable"
    assert d["predecessors"] == ["flaky_demo.main.prepare"]
    assert d["delta"]["writes"] == {"result": {"succeeded_on_attempt": 1}}
    assert d["status"]["status"] == "completed"
    fanout = run_ids(home, "--op", "fanout_demo")[0]
    join = get(client, f"/api/runs/{fanout}/states/join")
    assert len(join["predecessors"]) == 5 and join["successors"] == []
    assert get(client, f"/api/runs/{fanout}/states/nothing", 404)["error"]["code"] == (
        "state_not_found"
    )


def test_state_detail_has_the_facts_it_bound_and_its_events(
    client: TestClient, home: Where
) -> None:
    rid = run_ids(home, "--op", "stamped")[0]
    d = get(client, f"/api/runs/{rid}/states/stamp")
    keys = [f["key"] for f in d["facts"]]
    assert len(keys) == 2 and keys[1] == "receipt"
    assert keys[0].startswith(f"mfm:now_millis|run:{rid}|state:stamped.main.stamp|")
    for fact in d["facts"]:
        assert fact["attempt"] == 0 and fact["seq"] > 0
        assert fact["payload"] == mfm_json(g(home), "artifact", fact["payload_id"])
    assert d["facts"][1]["payload"] == {"number": 42}
    assert [(e["name"], e["payload"]) for e in d["events"]] == [("stamped", {"ok": True})]
    assert set(d["delta"]["writes"]) == {"at", "receipt"}


def test_attempts_timeline_shows_retries(client: TestClient, home: Where) -> None:
    rid = run_ids(home, "--op", "flaky_demo", "--phase", "Completed")[0]
    t = get(client, f"/api/runs/{rid}/attempts")
    rows = [(a["state_id"].rsplit(".", 1)[1], a["attempt"], a["outcome"]) for a in t["attempts"]]
    assert rows == [("prepare", 0, "completed"), ("call_upstream", 0, "failed"),
                    ("call_upstream", 1, "completed")]  # fmt: skip
    failed = t["attempts"][1]
    assert failed["error_code"] == "upstream_unavailable"
    assert failed["retry_at_ms"] == failed["closed_ms"]  # no backoff configured
    assert t["ended_ms"] >= t["started_ms"]


def test_ops_artifacts_health(client: TestClient, home: Where) -> None:
    assert get(client, "/api/ops") == mfm_json(g(home), "ops", "--json")
    rid = run_ids(home, "--op", "etl_demo")[0]
    snapshot = get(client, f"/api/runs/{rid}")["final_snapshot_id"]
    response = client.get(f"/api/artifacts/{snapshot[:12]}")
    assert response.status_code == 200
    assert response.content == mfm(g(home), "artifact", snapshot[:12]).stdout_bytes
    assert get(client, "/api/artifacts/abcdef", 400)["error"]["code"] == "id_prefix_too_short"
    health = get(client, "/api/health")
    assert health["ok"] is True
    scheme = "redis://" if "--events-url" in home.args else "sqlite://"
    assert health["events"].startswith(scheme), health


def test_backfills_match_the_cli(client: TestClient, home: Where) -> None:
    listed = get(client, "/api/backfills")
    assert [b["name"] for b in listed] == ["nightly"]
    api = get(client, "/api/backfills/nightly")
    cli = mfm_json(g(home), "backfill", "status", "nightly", "--once", "--json")
    for volatile in BACKFILL_VOLATILE:
        api.pop(volatile), cli.pop(volatile)
    assert api == cli
    assert api["counts"]["completed"] == 2 and api["counts"]["failed"] == 1
    assert [(f["partition"], f["code"]) for f in api["failed"]] == [("d2", "partition_failed")]
    assert get(client, "/api/backfills/none", 404)["error"]["code"] == "backfill_not_found"


def test_pages_render(client: TestClient, home: Where) -> None:
    for url in ["/", "/?op=flaky_demo&label=team%3Dops", "/ops", "/backfills",
                "/backfills/nightly"]:  # fmt: skip
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith("text/html")
    rid = run_ids(home, "--op", "flaky_demo", "--phase", "Failed")[0]
    page = client.get(f"/runs/{rid}")
    assert page.status_code == 200 and "upstream_unavailable" in page.text
    short = client.get(f"/runs/{rid[:8]}", follow_redirects=False)
    assert short.status_code == 307 and short.headers["location"] == f"/runs/{rid}"
    missing = client.get("/runs/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and "run_not_found" in missing.text


def test_metrics_endpoint(client: TestClient) -> None:
    client.get("/api/runs")
    text = client.get("/metrics").text
    assert "mfm_runs_running 0.0" in text
    assert 'mfm_ui_requests_total{route="api_runs",status="200"}' in text
    assert "mfm_ui_request_seconds_bucket" in text
