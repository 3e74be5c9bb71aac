"""The dashboard's backfill pages and API (docs/backfills.md): what `mfm backfill list` and
`mfm backfill status --json` show — counts by phase, rates, ETA, the failed partitions with
their error codes and links to their runs — read from the backfill journals and plans."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mfm_dist.backfill.model import BackfillError, BackfillPlan
from mfm_dist.backfill.planner import require_state
from mfm_dist.backfill.report import BackfillReport, build_report
from mfm_dist.ui.data import Dashboard

NAMESPACE = "backfill"
PHASE_ORDER = ("completed", "running", "pending", "failed", "cancelled", "rejected", "not_started")


class BackfillReader:
    """Backfill reports over the dashboard's stores."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def report(self, name: str) -> BackfillReport:
        """`mfm backfill status NAME --json`."""
        app = self.dashboard.app
        state = require_state(app.events, name)
        assert state.issue is not None
        plan = BackfillPlan.load(app.artifacts, state.issue.plan_id)
        return build_report(state, plan)

    def reports(self) -> list[BackfillReport]:
        """`mfm backfill list --json` (one report per backfill, newest first)."""
        out: list[BackfillReport] = []
        for summary in self.dashboard.app.events.list_journals(NAMESPACE):
            try:
                out.append(self.report(summary.name))
            except BackfillError:
                continue
        return out


def routes(
    dashboard: Dashboard,
    route: Callable[..., Route],
    page: Callable[..., Response],
    json: Callable[[Any], Response],
) -> list[Route]:
    """The pages `/backfills`, `/backfills/{name}` and `/api/backfills[/{name}]`."""
    reader = BackfillReader(dashboard)

    def list_page(request: Request) -> Response:
        return page("backfills.html", request, reports=reader.reports(), order=PHASE_ORDER)

    def one_page(request: Request) -> Response:
        report = reader.report(str(request.path_params["name"]))
        return page("backfill.html", request, report=report, order=PHASE_ORDER)

    def api_list(request: Request) -> Response:
        return json([r.model_dump(mode="json") for r in reader.reports()])

    def api_one(request: Request) -> Response:
        return json(reader.report(str(request.path_params["name"])).model_dump(mode="json"))

    return [
        route("/backfills", "backfills", list_page, api=False),
        route("/backfills/{name}", "backfill", one_page, api=False),
        route("/api/backfills", "api_backfills", api_list, api=True),
        route("/api/backfills/{name}", "api_backfill", api_one, api=True),
    ]
