"""The `http` transport against a real loopback server: allow-list, caps, structured errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from mfm_dist.errors import InvalidInput, MfmError, RateLimited
from mfm_dist.io.base import IoCall
from mfm_dist.io.live import LiveIo
from mfm_dist.io.router import TransportRegistry
from mfm_dist.io.transports.http import HttpTransport
from support.io_helpers import (
    FactHarness,
    JsonHandler,
    LoopbackServer,
    loopback_server,
    stall_until_released,
)

TOKEN = "tok-9c1e55d0"
LEAK = "leaky-body-51aa"


def _routes(server: LoopbackServer) -> None:
    def ok(h: JsonHandler) -> None:
        h.send_json(200, {"ok": True, "path": h.path})

    def echo(h: JsonHandler) -> None:
        h.send_raw(200, h.read_body())

    def echo_auth(h: JsonHandler) -> None:
        h.send_json(200, {"seen": h.headers.get("Authorization")})

    def big(h: JsonHandler) -> None:
        h.send_json(200, {"blob": "b" * 5000})

    def big_unsized(h: JsonHandler) -> None:
        h.send_raw(200, b'{"blob":"' + b"b" * 200_000 + b'"}', content_length=False)

    def status(code: int) -> Any:
        return lambda h: h.send_json(code, {"error": LEAK})

    def text(h: JsonHandler) -> None:
        h.send_raw(200, f"<html>{LEAK}</html>".encode())

    def no_content(h: JsonHandler) -> None:
        h.send_response(204)
        h.end_headers()

    def redirect(h: JsonHandler) -> None:
        h.send_response(302)
        h.send_header("Location", "http://example.invalid/")
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes.update({
        "/ok": ok, "/echo": echo, "/echo_auth": echo_auth, "/big": big,
        "/big_unsized": big_unsized, "/s500": status(500), "/s503": status(503),
        "/s404": status(404), "/s429": status(429), "/text": text, "/204": no_content,
        "/redirect": redirect, "/slow": stall_until_released,
    })


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as srv:
        _routes(srv)
        yield srv


@pytest.fixture
def http(server: LoopbackServer) -> HttpTransport:
    return HttpTransport(f"127.0.0.1:{server.port}", max_response_bytes=1000)


def get(url: str, **extra: Any) -> dict[str, Any]:
    return {"method": "GET", "url": url, **extra}


def fail(transport: HttpTransport, request: Any) -> MfmError:
    with pytest.raises(MfmError) as info:
        transport.call(request)
    text = str(info.value) + repr(info.value.info.model_dump())
    for leak in (LEAK, TOKEN, "/ok", "?q="):
        assert leak not in text  # never bodies, headers or the url
    return info.value


def test_get_and_post_json(server: LoopbackServer, http: HttpTransport) -> None:
    assert http.call(get(server.url("/ok?q=1"))) == {
        "status": 200, "body": {"ok": True, "path": "/ok?q=1"}}
    posted = http.call({"method": "POST", "url": server.url("/echo"), "json": {"a": [1, 2]}})
    assert posted == {"status": 200, "body": {"a": [1, 2]}}
    assert http.call(get(server.url("/204"))) == {"status": 204, "body": None}


def test_host_allow_list(server: LoopbackServer) -> None:
    any_port = HttpTransport("127.0.0.1")
    assert any_port.call(get(server.url("/ok")))["status"] == 200
    other_port = HttpTransport(f"127.0.0.1:{server.port + 1}")
    err = fail(other_port, get(server.url("/ok")))
    assert err.code == "http_host_not_allowed"
    assert err.info.details == {"method": "GET", "host": "127.0.0.1", "port": server.port}
    err = fail(HttpTransport("127.0.0.1"), get(f"http://localhost:{server.port}/ok"))
    assert err.code == "http_host_not_allowed"
    for disabled in (HttpTransport(""), HttpTransport.from_env({}),
                     HttpTransport.from_env({"MFM_HTTP_ALLOW_HOSTS": " , "})):
        assert fail(disabled, get(server.url("/ok"))).code == "http_host_not_allowed"
    env = HttpTransport.from_env({"MFM_HTTP_ALLOW_HOSTS": f"a.example, 127.0.0.1:{server.port}"})
    assert env.call(get(server.url("/ok")))["status"] == 200
    with pytest.raises(InvalidInput) as info:
        HttpTransport("host/with/path")
    assert info.value.code == "http_allow_invalid"


@pytest.mark.parametrize(
    "request_",
    [
        "nope",
        {"method": "PUT", "url": "http://127.0.0.1/ok"},
        {"method": "GET", "url": "http://127.0.0.1/ok", "json": {"a": 1}},
        {"method": "GET", "url": "ftp://127.0.0.1/ok"},
        {"method": "GET", "url": "http://user:pw@127.0.0.1/ok"},
        {"method": "GET", "url": "http://127.0.0.1/ok", "headers": {"X": 1}},
        {"method": "GET", "url": "http://127.0.0.1/ok", "timeout_ms": 0},
        {"method": "GET", "url": "http://127.0.0.1/ok", "extra": TOKEN},
    ],
)
def test_invalid_requests(http: HttpTransport, request_: Any) -> None:
    assert fail(http, request_).code == "http_request_invalid"


def test_a_bad_header_value_is_rejected_without_echo(server: LoopbackServer,
                                                      http: HttpTransport) -> None:
    err = fail(http, get(server.url("/ok"), headers={"X-Token": f"{TOKEN}\r\nInjected: 1"}))
    assert err.code in ("http_request_invalid", "http_transport_failed")


def test_timeout(server: LoopbackServer, http: HttpTransport) -> None:
    err = fail(http, get(server.url("/slow"), timeout_ms=300))
    assert err.code == "http_timeout"
    assert err.retryable is True
    assert err.info.details["timeout_ms"] == 300


def test_oversized_bodies_are_cut_off(server: LoopbackServer, http: HttpTransport) -> None:
    for path in ("/big", "/big_unsized"):
        err = fail(http, get(server.url(path)))
        assert err.code == "http_response_too_large", path
        assert err.info.details["limit_bytes"] == 1000
        assert err.info.details["body_bytes"] > 1000
    assert HttpTransport("127.0.0.1").max_response_bytes == 1 << 20


@pytest.mark.parametrize(
    ("path", "status", "retryable"),
    [("/s404", 404, False), ("/s500", 500, True), ("/s503", 503, True), ("/s429", 429, True),
     ("/redirect", 302, False)],
)
def test_non_2xx_statuses(server: LoopbackServer, http: HttpTransport, path: str, status: int,
                          retryable: bool) -> None:
    err = fail(http, get(server.url(path)))
    assert err.code == "http_status"
    assert err.retryable is retryable
    assert err.info.details["status"] == status
    assert isinstance(err, RateLimited) == (status == 429)


def test_invalid_json_body(server: LoopbackServer, http: HttpTransport) -> None:
    err = fail(http, get(server.url("/text")))
    assert err.code == "http_response_invalid_json"
    assert err.info.details["status"] == 200


def test_connection_failure(http: HttpTransport, server: LoopbackServer) -> None:
    closed = LoopbackServer()
    port = closed.port
    closed.server_close()
    err = fail(HttpTransport(f"127.0.0.1:{port}"), get(f"http://127.0.0.1:{port}/ok"))
    assert err.code == "http_transport_failed"
    assert err.retryable is True


# --- through LiveIo: headers are never stored ------------------------------------------------


def _live(h: FactHarness, transport: HttpTransport) -> LiveIo:
    reg = TransportRegistry()
    reg.register("http", transport)
    return LiveIo(h.scope(), reg)


def test_secret_headers_appear_in_no_stored_byte(server: LoopbackServer) -> None:
    transport = HttpTransport(f"127.0.0.1:{server.port}")
    h = FactHarness()
    h.begin_attempt()
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": TOKEN}
    call = IoCall(namespace="http.prices", fact_key="prices:v1",
                  request=get(server.url("/ok?q=1"), headers=headers))
    result = asyncio.run(_live(h, transport).call(call))
    assert result.response == {"status": 200, "body": {"ok": True, "path": "/ok?q=1"}}
    assert server.seen_headers[-1]["Authorization"] == f"Bearer {TOKEN}"  # it was sent
    stored = h.all_stored_bytes()
    assert h.fact_events() and len(h.artifact_snapshot()) == 1
    for needle in (TOKEN.encode(), b"Bearer", b"Authorization", b"X-Api-Key"):
        assert needle not in stored

    # A server that echoes the secret back: the payload is rejected and nothing is stored.
    before = h.all_stored_bytes()
    echo = IoCall(namespace="http", fact_key="echo",
                  request=get(server.url("/echo_auth"), headers=headers))
    with pytest.raises(MfmError) as info:
        asyncio.run(_live(h, transport).call(echo))
    assert info.value.code == "secrets_detected"
    assert TOKEN not in str(info.value)
    assert h.all_stored_bytes() == before
