"""The dashboard's ASGI application (Starlette): server-rendered pages, the JSON API under
`/api/`, and `/metrics` (docs/dashboard.md).

Read-only: every route is a GET and nothing is ever written to a store. With a token,
every request must carry it (`Authorization: Bearer <token>`, or the `mfm_ui_token`
cookie the `/login` page sets); without one the server only listens on loopback
(`mfm_dist.ui.server`).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from mfm_dist.engine.lifecycle import submission_of
from mfm_dist.engine.snapshots import read_artifact
from mfm_dist.errors import ErrorInfo, InvalidId, InvalidInput, MfmError, NotFound
from mfm_dist.ids import RunId
from mfm_dist.secrets import contains_secret, is_secret_string
from mfm_dist.ui.backfills import routes as backfill_routes
from mfm_dist.ui.data import STATUS_LETTERS, Dashboard, RunFilters, gc_paused, now_ms, short_ids
from mfm_dist.ui.run_page import run_graph
from mfm_dist.ui.safety import label_pairs, scrub, shown

log = logging.getLogger("mfm.ui")
HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "mfm_ui_token"
EVENTS_PAGE = 100
PUBLIC_PATHS = ("/login", "/static/")


class SafeJSON(JSONResponse):
    """JSON with every secret-shaped value scrubbed (never echoed, docs/secrets.md)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(scrub(content))


def _error_status(exc: MfmError) -> int:
    if isinstance(exc, NotFound) or exc.code.endswith("_not_found"):
        return 404
    if isinstance(exc, InvalidInput | InvalidId):
        return 400
    if exc.code in ("secret_output_refused", "secrets_detected"):
        return 403
    if exc.info.retryable:
        return 503
    return 500


def _error_json(info: ErrorInfo, status: int) -> SafeJSON:
    body = {"error": info.redacted().model_dump(mode="json", exclude={"details"})}
    return SafeJSON(body, status_code=status)


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(ms: int | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,
        finalize=shown,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _fmt_ms
    env.filters["duration"] = _fmt_duration
    env.filters["short"] = lambda text, n=12: str(text)[:n] if text else ""
    env.filters["label_pairs"] = label_pairs
    return env


class TokenGate:
    """Every request but the login page and static files must carry the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        if path.startswith(PUBLIC_PATHS) or self._allowed(request):
            await self.app(scope, receive, send)
            return
        response: Response
        if path.startswith("/api/") or path == "/metrics":
            info = MfmError("unauthorized", "this dashboard needs its token (see docs)").info
            response = _error_json(info, 401)
            response.headers["WWW-Authenticate"] = "Bearer"
        else:
            response = RedirectResponse("/login", status_code=303)
        await response(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        assert self.token is not None
        given = ""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        else:
            given = request.cookies.get(TOKEN_COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


class UiMetrics:
    """The dashboard process's own metrics (requests) and the store's running runs."""

    def __init__(self, dashboard: Dashboard, queue_depths: Callable[[], dict[str, int]] | None):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mfm_ui_requests",
            "Dashboard requests, by route and HTTP status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "mfm_ui_request_seconds",
            "Dashboard response time, by route.",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
        )
        self.registry.register(_RunningRuns(dashboard))
        if queue_depths is not None:
            from workers.metrics import QueueDepthCollector

            self.registry.register(QueueDepthCollector(queue_depths))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.seconds.labels(route=route).observe(seconds)


class _RunningRuns:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("mfm_runs_running", "Runs in phase Running in the event store.")
        try:
            family.add_metric([], self.dashboard.running_count())
        except Exception:
            return
        yield family


Handler = Callable[[Request], Response]


def create_app(
    dashboard: Dashboard,
    *,
    token: str | None = None,
    queue_depths: Callable[[], dict[str, int]] | None = None,
) -> Starlette:
    """The dashboard over `dashboard`'s stores. `queue_depths` (distributed) feeds
    `mfm_queue_depth`."""
    env = _templates()
    ui_metrics = UiMetrics(dashboard, queue_depths)
    for name in env.list_templates():  # compile now, not on someone's first page
        env.get_template(name)

    def page(name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("where", dashboard.where())
        context["token_gate"] = token is not None
        html = env.get_template(name).render(request=request, **context)
        return HTMLResponse(html, status_code=status)

    def route(path: str, name: str, fn: Handler, *, api: bool) -> Route:
        def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = fn(request)
            except MfmError as exc:
                status = _error_status(exc)
                if api:
                    response = _error_json(exc.info, status)
                else:
                    response = page("error.html", request, status, error=exc.info.redacted())
            except Exception as exc:  # never a traceback to the browser: to the log
                log.exception("%s %s failed", request.method, request.url.path)
                info = MfmError("internal_error", f"internal error ({type(exc).__name__})").info
                response = (
                    _error_json(info, 500) if api else page("error.html", request, 500, error=info)
                )
            ui_metrics.observe(name, response.status_code, time.perf_counter() - started)
            return response

        return Route(path, endpoint, methods=["GET"], name=name)

    def run_arg(request: Request) -> RunId:
        return dashboard.resolve(str(request.path_params["run"]))

    # -- pages -----------------------------------------------------------------------------------
    def runs_page(request: Request) -> Response:
        filters = RunFilters.from_params(request.query_params.get, request.query_params.getlist)
        result = dashboard.runs(filters)
        ids = [str(s.run_id) for s in result.summaries]
        shorts = short_ids(ids)
        next_url = None
        if result.next_cursor is not None:
            next_url = "/?" + urlencode(filters.params(cursor=result.next_cursor))
        first_url = "/?" + urlencode(filters.params()) if filters.cursor else None
        ops = [o["op_id"] for o in dashboard.ops()["operations"]]
        return page(
            "runs.html",
            request,
            filters=filters,
            page=result,
            shorts=shorts,
            now_ms=now_ms(),
            next_url=next_url,
            first_url=first_url,
            ops=sorted(set(ops)),
            label_link=lambda key, value: "/?" + urlencode([("label", f"{key}={value}")]),
        )

    def run_page(request: Request) -> Response:
        given = str(request.path_params["run"])
        rid = dashboard.resolve(given)
        if str(rid) != given:
            return RedirectResponse(f"/runs/{rid}", status_code=307)
        view = dashboard.view(rid)
        report = dashboard.report(view)
        driver = dashboard.driver(view)
        history = view.history
        submission = submission_of(history.envelopes[:2])
        ended = history.envelopes[-1].ts_millis if view.finished else None
        with gc_paused():  # the page walks every state: no collection of the cached runs
            return page(
                "run.html",
                request,
                view=view,
                report=report,
                driver=driver,
                labels=dict(submission.labels) if submission is not None else {},
                started_ms=history.started_ms,
                ended_ms=ended,
                duration_ms=(ended if ended is not None else now_ms()) - history.started_ms,
                graph=run_graph(view, report),
                failed=[s for s in report.states if s.status.value in ("failed", "retrying")],
                cancel=history.cancel,
                letters={s.value: letter for s, letter in STATUS_LETTERS.items()},
            )

    def ops_page(request: Request) -> Response:
        return page("ops.html", request, ops=dashboard.ops())

    def login_page(request: Request) -> Response:
        if token is None:
            return RedirectResponse("/", status_code=303)
        return page("login.html", request)

    # -- API -------------------------------------------------------------------------------------
    def api_runs(request: Request) -> Response:
        filters = RunFilters.from_params(request.query_params.get, request.query_params.getlist)
        result = dashboard.runs(filters)
        response = SafeJSON(result.rows)
        if result.next_cursor is not None:
            response.headers["X-Next-Cursor"] = result.next_cursor
            query = urlencode(filters.params(cursor=result.next_cursor))
            response.headers["Link"] = f'</api/runs?{query}>; rel="next"'
        return response

    def api_status(request: Request) -> Response:
        return SafeJSON(dashboard.status(run_arg(request)))

    def api_live(request: Request) -> Response:
        return SafeJSON(dashboard.live(run_arg(request)))

    def api_events(request: Request) -> Response:
        rid = run_arg(request)
        try:
            from_seq = int(request.query_params.get("from", "1"))
            limit = int(request.query_params.get("limit", str(EVENTS_PAGE)))
        except ValueError:
            raise InvalidInput("usage", "from and limit are numbers") from None
        rows = dashboard.events_page(rid, from_seq, limit)
        response = SafeJSON(rows)
        response.headers["X-Head-Seq"] = str(dashboard.events.head_seq(rid))
        return response

    def api_context(request: Request) -> Response:
        content = dashboard.context(run_arg(request), request.query_params.get("state"))
        if contains_secret(content):
            raise MfmError("secret_output_refused", "snapshot content is secret-shaped; not shown")
        return SafeJSON(content)

    def api_state(request: Request) -> Response:
        return SafeJSON(dashboard.state_detail(run_arg(request), str(request.path_params["state"])))

    def api_attempts(request: Request) -> Response:
        return SafeJSON(dashboard.attempts(run_arg(request)))

    def api_verify(request: Request) -> Response:
        return SafeJSON(dashboard.verify(run_arg(request)))

    def api_replay(request: Request) -> Response:
        return SafeJSON(dashboard.replay(run_arg(request)))

    def api_ops(request: Request) -> Response:
        return SafeJSON(dashboard.ops())

    def api_artifact(request: Request) -> Response:
        app = dashboard.app
        aid = app.artifact_id(str(request.path_params["artifact"]))
        data = read_artifact(app.artifacts, aid)
        if is_secret_string(data.decode("utf-8", errors="replace")):
            raise MfmError("secret_output_refused", "artifact content is secret-shaped; not shown")
        return Response(data, media_type="application/json")

    def api_health(request: Request) -> Response:
        return SafeJSON({"ok": True, "events": dashboard.where()})

    def metrics_endpoint(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        body = generate_latest(ui_metrics.registry) + generate_latest(REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        route("/", "runs", runs_page, api=False),
        route("/runs/{run}", "run", run_page, api=False),
        route("/ops", "ops", ops_page, api=False),
        route("/login", "login", login_page, api=False),
        route("/api/health", "api_health", api_health, api=True),
        route("/api/runs", "api_runs", api_runs, api=True),
        route("/api/runs/{run}", "api_status", api_status, api=True),
        route("/api/runs/{run}/live", "api_live", api_live, api=True),
        route("/api/runs/{run}/events", "api_events", api_events, api=True),
        route("/api/runs/{run}/context", "api_context", api_context, api=True),
        route("/api/runs/{run}/states/{state}", "api_state", api_state, api=True),
        route("/api/runs/{run}/attempts", "api_attempts", api_attempts, api=True),
        route("/api/runs/{run}/verify", "api_verify", api_verify, api=True),
        route("/api/runs/{run}/replay", "api_replay", api_replay, api=True),
        route("/api/ops", "api_ops", api_ops, api=True),
        route("/api/artifacts/{artifact}", "api_artifact", api_artifact, api=True),
        route("/metrics", "metrics", metrics_endpoint, api=True),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    routes[-2:-2] = backfill_routes(dashboard, route, page, SafeJSON)
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(TokenGate, token=token),
            Middleware(GZipMiddleware, minimum_size=2048),
        ],
    )
