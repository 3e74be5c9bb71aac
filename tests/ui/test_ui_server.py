"""Serving the dashboard: loopback by default, a token for anything else, and the token
asked of every request when one is set (a real uvicorn server)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mfm_dist.ui.server import BindRefused, check_binding, is_loopback
from support.ui_helpers import dashboard_for, mfm, serve_dashboard

TOKEN = "0123456789abcdef-token"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)
    check_binding(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "192.168.0.1", "8.8.8.8"])
def test_other_addresses_need_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(BindRefused) as refused:
        check_binding(host, None)
    assert refused.value.code == "ui_token_required"
    check_binding(host, TOKEN)  # allowed with one


def test_the_cli_refuses_before_serving(tmp_path: Path) -> None:
    g = ["--home", str(tmp_path / ".mfm")]
    result = mfm(g, "ui", "--host", "0.0.0.0", "--port", "1")
    assert result.exit_code == 2
    assert result.stderr.startswith("error[ui_token_required]:")
    short = mfm(g, "ui", "--host", "0.0.0.0", "--token", "short")
    assert short.exit_code == 2 and short.stderr.startswith("error[ui_token_invalid]:")
    secret = tmp_path / "ui_token"
    secret.write_text("too-short\n")
    from_file = mfm(g, "ui", "--host", "0.0.0.0", "--token-file", str(secret))
    assert from_file.exit_code == 2 and from_file.stderr.startswith("error[ui_token_invalid]:")
    assert "too-short" not in from_file.stderr  # a file's content is never shown
    missing = mfm(g, "ui", "--host", "0.0.0.0", "--token-file", str(tmp_path / "none"))
    assert missing.exit_code == 2 and "cannot read the dashboard token file" in missing.stderr
    assert not (tmp_path / ".mfm").exists()  # nothing was created: it never opened a store


def test_token_is_required_on_every_request(tmp_path: Path) -> None:
    home = tmp_path / ".mfm"
    ran = mfm(["--home", str(home)], "run", "chain_demo", "--input", '{"states": 2}')
    assert ran.exit_code == 0
    with serve_dashboard(dashboard_for(home=str(home)), token=TOKEN) as url:
        for path in ("/api/runs", "/metrics", "/api/health"):
            response = httpx.get(url + path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        page = httpx.get(url + "/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert httpx.get(url + "/login").status_code == 200
        assert httpx.get(url + "/static/ui.css").status_code == 200
        wrong = httpx.get(url + "/api/runs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = httpx.get(url + "/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200 and len(good.json()) == 1
        cookie = httpx.get(url + "/", cookies={"mfm_ui_token": TOKEN})
        assert cookie.status_code == 200 and "chain_demo" in cookie.text
        scrape = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scrape.status_code == 200 and "mfm_runs_running" in scrape.text


def test_without_token_loopback_serves_everything(tmp_path: Path) -> None:
    with serve_dashboard(dashboard_for(home=str(tmp_path / ".mfm"))) as url:
        assert httpx.get(url + "/api/runs").json() == []
        assert "No runs in this store yet" in httpx.get(url + "/").text
        assert httpx.get(url + "/login", follow_redirects=False).status_code == 303


def test_mfm_ui_serves_until_stopped(tmp_path: Path) -> None:
    """`mfm ui` itself: a real process on a loopback port, its token read from a file (as
    the compose service does), stopped by its pid."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from support.servers import free_port

    home = tmp_path / ".mfm"
    ran = mfm(["--home", str(home)], "run", "chain_demo", "--input", '{"states": 3}')
    assert ran.exit_code == 0
    port = free_port()
    secret = tmp_path / "ui_token"
    secret.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfm_dist.cli.main", "--home", str(home), "ui", "--port", str(port)],
        stderr=subprocess.PIPE,
        env={**os.environ, "MFM_UI_TOKEN": "", "MFM_UI_TOKEN_FILE": str(secret)},
    )
    api = f"http://127.0.0.1:{port}/api/runs"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                refused = httpx.get(api, timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert refused.status_code == 401
        rows = httpx.get(api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()
        assert [r["op_id"] for r in rows] == ["chain_demo"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}/" in err.decode()
