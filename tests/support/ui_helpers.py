"""Helpers of the dashboard tests: the CLI as a function, a dashboard over a store, a real
uvicorn server in a thread, and a headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by scripts/setup.sh) driven by Selenium."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner, Result

from mfm_dist.cli.app import App
from mfm_dist.cli.main import cli
from mfm_dist.settings import Settings
from mfm_dist.ui.app import create_app
from mfm_dist.ui.data import Dashboard
from support import REPO
from support.servers import free_port

SCREENSHOTS = REPO / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def mfm(global_args: list[str], *args: str) -> Result:
    return CliRunner().invoke(cli, [*global_args, *args], catch_exceptions=False)


def mfm_json(global_args: list[str], *args: str) -> Any:
    result = mfm(global_args, *args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def dashboard_for(**app_args: Any) -> Dashboard:
    """A dashboard over the stores `app_args` name, with the test environment's settings
    (what `mfm ui` reads at its start)."""
    return Dashboard(App(read_only=True, settings=Settings.from_env(), **app_args))


@contextlib.contextmanager
def serving(web: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the ASGI app `web` on uvicorn in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(web, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_dashboard(dashboard: Dashboard, **kwargs: Any) -> Iterator[str]:
    with serving(create_app(dashboard, **kwargs)) as url:
        yield url


def get_json(url: str, **kwargs: Any) -> Any:
    response = httpx.get(url, timeout=60, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def chromium_driver() -> Any:
    """A headless Chromium (1400×900)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), "scripts/setup.sh installs chromium"
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(check: Any, what: str, timeout_s: float = 20.0, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)
