#!/usr/bin/env python3
"""Benchmark the dashboard's run page on a large run (not a test): how long until a
10,000-state run's page is on screen, and where the server's time goes.

The run (`fanout_demo` of `--states - 1` items and the join, every state completed:
2·states + 2 events) is written straight into the stores — the embedded ones (SQLite +
files) and the distributed ones (a redis-server and a SeaweedFS S3 server started here, on
free loopback ports). For each backend and round:

* **server, first view**: a fresh dashboard (stores opened and operations loaded, as
  `mfm ui` does before serving) answers `GET /runs/RUN` over HTTP; the time to the last
  byte, the CPU time it took (less sensitive than wall time to the machine's other load),
  and how the server spent it (`RunView.timings`: reading and decoding the events,
  checking the history, the manifest, the plan, the layout; then the report and the page);
* **browser, first view**: the same on another fresh dashboard, in headless Chromium, from
  navigation start until the page is on screen (its `load` event or its first contentful
  paint, whichever is later: every square and the drawing laid out), and how much of that
  was the server's answer;
* **browser, again**: the run cached, as while someone watches it (the fastest of 3).

The machine is shared: rounds are interleaved and the median and the fastest are shown,
with the load average. Usage:
    .venv/bin/python scripts/bench_ui.py [--states 10000] [--rounds 3]
        [--only embedded|distributed] [--no-browser]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402

from mfm_dist.cli.app import App  # noqa: E402
from mfm_dist.ids import RunId  # noqa: E402
from mfm_dist.settings import Settings  # noqa: E402
from mfm_dist.stores.urls import open_stores  # noqa: E402
from mfm_dist.ui.app import create_app  # noqa: E402
from mfm_dist.ui.data import Dashboard  # noqa: E402
from support.big_runs import write_fanout_run  # noqa: E402
from support.servers import (  # noqa: E402
    S3_ACCESS_ENV,
    S3_SECRET_ENV,
    TEST_S3_ACCESS,
    TEST_S3_SECRET,
    RedisServer,
    S3Server,
)
from support.ui_helpers import chromium_driver, serving  # noqa: E402

NAV_TIMING = (
    "var t = performance.timing, p = performance.getEntriesByName('first-contentful-paint');"
    " return {nav: t.navigationStart, last: t.responseEnd, load: t.loadEventEnd,"
    " paint: p.length ? t.navigationStart + Math.round(p[0].startTime) : 0,"
    " cells: document.querySelectorAll('#graph i').length};"
)
"""Navigation timing: the page is on screen at its `load` event or its first contentful
paint, whichever is later (the paint comes after the layout of every square)."""


@dataclass
class Backend:
    name: str
    app_args: dict[str, Any]
    settings: Settings
    run_id: str = ""
    events: int = 0


@dataclass
class Samples:
    server_s: list[float] = field(default_factory=list)
    server_cpu_s: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    browser_cold_s: list[float] = field(default_factory=list)
    browser_answer_s: list[float] = field(default_factory=list)
    browser_warm_s: list[float] = field(default_factory=list)


@contextlib.contextmanager
def embedded(states: int) -> Iterator[Backend]:
    with tempfile.TemporaryDirectory(prefix="mfm-bench-ui-") as tmp:
        home = str(Path(tmp) / ".mfm")
        backend = Backend("embedded (SQLite + files)", {"home": home}, Settings())
        stores = open_stores(home=home, settings=backend.settings)
        backend.run_id = write_fanout_run(stores, states)
        backend.events = stores.events.head_seq(RunId(backend.run_id))
        stores.close()
        yield backend


@contextlib.contextmanager
def distributed(states: int) -> Iterator[Backend]:
    redis = RedisServer().start()
    s3 = S3Server()
    try:
        s3.start()
        s3.create_bucket("bench-ui")
        settings = Settings.from_env({S3_ACCESS_ENV: TEST_S3_ACCESS, S3_SECRET_ENV: TEST_S3_SECRET})
        events_url, artifacts_url = redis.url, s3.url_for("bench-ui", "artifacts")
        urls = {"events_url": events_url, "artifacts_url": artifacts_url}
        backend = Backend("distributed (Redis + SeaweedFS S3)", urls, settings)
        stores = open_stores(events_url, artifacts_url, settings=settings)
        backend.run_id = write_fanout_run(stores, states)
        backend.events = stores.events.head_seq(RunId(backend.run_id))
        stores.close()
        yield backend
    finally:
        s3.cleanup()
        redis.cleanup()


def fresh_dashboard(backend: Backend) -> Dashboard:
    """What `mfm ui` has before its first request: stores open, operations loaded."""
    app = App(read_only=True, settings=backend.settings, **backend.app_args)
    app.stores()
    app.registry()
    return Dashboard(app)


def server_first_view(backend: Backend) -> tuple[float, float, dict[str, float]]:
    """Wall time to the last byte, the process's CPU time meanwhile (the server's, and this
    client's), and the server's steps."""
    dashboard = fresh_dashboard(backend)
    with serving(create_app(dashboard)) as url, httpx.Client(timeout=120) as client:
        client.get(url + "/api/health")
        cpu = time.process_time()
        started = time.perf_counter()
        response = client.get(f"{url}/runs/{backend.run_id}")
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
        assert response.status_code == 200, response.text[:500]
    view = dashboard.view(RunId(backend.run_id))
    stages = dict(getattr(view, "timings", {}) or {})
    stages["page (report, layout, template, gzip, HTTP)"] = took - sum(stages.values())
    return took, cpu, stages


def browser_views(backend: Backend, browser: Any, states: int) -> tuple[float, float, float]:
    dashboard = fresh_dashboard(backend)
    with serving(create_app(dashboard)) as url:
        browser.get(url + "/static/ui.css")  # the browser itself is warm

        def load() -> dict[str, int]:
            browser.get(f"{url}/runs/{backend.run_id}")
            timing: dict[str, int] = browser.execute_script(NAV_TIMING)
            assert timing["cells"] == states, timing
            return timing

        cold = load()
        warm = min(on_screen(load()) for _ in range(3))
    return on_screen(cold), (cold["last"] - cold["nav"]) / 1000, warm


def on_screen(timing: dict[str, int]) -> float:
    return (max(timing["load"], timing["paint"]) - timing["nav"]) / 1000


def fmt(values: list[float]) -> str:
    if not values:
        return "—"
    return f"median {statistics.median(values):.2f} s, fastest {min(values):.2f} s"


def report(backend: Backend, samples: Samples, states: int) -> None:
    print(f"\n## {backend.name}: {states:,} states, {backend.events:,} events")
    print(f"server, first view (HTTP, last byte):     {fmt(samples.server_s)}")
    print(f"    CPU time of the process meanwhile:    {fmt(samples.server_cpu_s)}")
    names = list(samples.stages[0]) if samples.stages else []
    for name in names:
        values = [s.get(name, 0.0) * 1000 for s in samples.stages]
        print(f"    {name:<46s} median {statistics.median(values):7.1f} ms")
    if samples.browser_cold_s:
        print(f"browser, first view (navigation → on screen): {fmt(samples.browser_cold_s)}")
        print(f"    of which the server's answer:             {fmt(samples.browser_answer_s)}")
        print(f"browser, again (cached):                      {fmt(samples.browser_warm_s)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("embedded", "distributed"))
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    kinds = [args.only] if args.only else ["embedded", "distributed"]
    browser = None if args.no_browser else chromium_driver()
    try:
        for kind in kinds:
            make = embedded if kind == "embedded" else distributed
            with make(args.states) as backend:
                samples = Samples()
                for _ in range(args.rounds):
                    took, cpu, stages = server_first_view(backend)
                    samples.server_s.append(took)
                    samples.server_cpu_s.append(cpu)
                    samples.stages.append(stages)
                    if browser is not None:
                        cold, answer, warm = browser_views(backend, browser, args.states)
                        samples.browser_cold_s.append(cold)
                        samples.browser_answer_s.append(answer)
                        samples.browser_warm_s.append(warm)
                report(backend, samples, args.states)
    finally:
        if browser is not None:
            browser.quit()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average {load}; total benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
