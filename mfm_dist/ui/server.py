"""Serving the dashboard: the binding rules and uvicorn (docs/dashboard.md).

Loopback only, unless a token is configured: the dashboard shows every run's history,
context and facts, so anything reachable from another host must ask for a token.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

MIN_TOKEN = 16


class BindRefused(Exception):
    """The address may not be served with these settings: `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_loopback(host: str) -> bool:
    """True if every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    if not name:
        return False  # "" binds every interface
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%", 1)[0]).is_loopback for a in addresses
    )


def check_binding(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token, and a token too short to matter."""
    if token is not None and len(token) < MIN_TOKEN:
        raise BindRefused(
            "ui_token_invalid", f"the dashboard token must be at least {MIN_TOKEN} characters"
        )
    if token is None and not is_loopback(host):
        raise BindRefused(
            "ui_token_required",
            f"refusing to serve the dashboard on {host}, which is not a loopback address, "
            "without a token: set --token or MFM_UI_TOKEN (or bind 127.0.0.1)",
        )


def read_token_file(path: str) -> str:
    """The token held in a file (e.g. a compose secret), its final newline dropped. The
    file's content is never shown, whatever goes wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise BindRefused(
            "ui_token_invalid", f"cannot read the dashboard token file {path}: {why}"
        ) from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def serve(
    app: Any,
    host: str,
    port: int,
    token: str | None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run `app` on uvicorn at host:port until interrupted (after `check_binding`)."""
    import uvicorn

    check_binding(host, token)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    if on_ready is not None:
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{port}/")
    server.run()
