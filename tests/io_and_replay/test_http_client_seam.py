"""The `http` transport's client seam: one `httpx.Client` serves every call (built once,
closed by `close()`), a caller may inject its own client or an httpx transport
(`httpx.MockTransport`), and what the transport does with a response is testable without a
socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mfm_dist.errors import MfmError
from mfm_dist.io.transports.http import HttpTransport
from support.io_helpers import LoopbackServer, loopback_server

HOST = "api.example"


def _handler(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/ok":
        body = {"method": request.method, "json": json.loads(request.content or b"null")}
        return httpx.Response(200, json=body)
    if request.url.path == "/moved":
        return httpx.Response(302, headers={"Location": f"http://{HOST}/ok"})
    if request.url.path == "/big":
        return httpx.Response(200, content=b'"' + b"b" * 5000 + b'"')
    if request.url.path == "/down":
        raise httpx.ConnectError("refused", request=request)
    return httpx.Response(404)


def test_a_mock_transport_needs_no_socket() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _handler(request)

    with HttpTransport(HOST, transport=httpx.MockTransport(record)) as http:
        got = http.call({"method": "POST", "url": f"http://{HOST}/ok", "json": {"a": 1}})
        assert got == {"status": 200, "body": {"method": "POST", "json": {"a": 1}}}
        assert http.call({"method": "GET", "url": f"http://{HOST}/ok"})["body"] == {
            "method": "GET",
            "json": None,
        }
    assert [r.url.path for r in seen] == ["/ok", "/ok"]


@pytest.mark.parametrize(
    ("path", "code", "retryable"),
    [
        ("/moved", "http_status", False),  # redirects are never followed
        ("/missing", "http_status", False),
        ("/big", "http_response_too_large", False),
        ("/down", "http_transport_failed", True),
    ],
)
def test_responses_are_judged_the_same_through_any_transport(
    path: str, code: str, retryable: bool
) -> None:
    http = HttpTransport(HOST, max_response_bytes=1000, transport=httpx.MockTransport(_handler))
    with pytest.raises(MfmError) as caught:
        http.call({"method": "GET", "url": f"http://{HOST}{path}"})
    assert caught.value.code == code and caught.value.info.retryable is retryable
    http.close()


def test_an_injected_client_is_used_and_left_open() -> None:
    client = httpx.Client(transport=httpx.MockTransport(_handler), follow_redirects=True)
    http = HttpTransport(HOST, client=client)
    # The transport refuses redirects per request, whatever the client was built with.
    with pytest.raises(MfmError) as caught:
        http.call({"method": "GET", "url": f"http://{HOST}/moved"})
    assert caught.value.code == "http_status"
    http.close()
    assert not client.is_closed  # the caller's to close
    assert http.call({"method": "GET", "url": f"http://{HOST}/ok"})["status"] == 200
    client.close()


def test_client_and_transport_are_exclusive() -> None:
    with pytest.raises(TypeError):
        HttpTransport(HOST, client=httpx.Client(), transport=httpx.MockTransport(_handler))


def test_the_allow_list_is_checked_before_any_transport() -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("sent")

    http = HttpTransport(HOST, transport=httpx.MockTransport(never))
    with pytest.raises(MfmError) as caught:
        http.call({"method": "GET", "url": "http://other.example/ok"})
    assert caught.value.code == "http_host_not_allowed"


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as srv:
        srv.routes["/ok"] = lambda h: h.send_json(200, {"ok": True})
        yield srv


def test_one_client_serves_every_call_and_keeps_its_connection(server: LoopbackServer) -> None:
    http = HttpTransport(f"127.0.0.1:{server.port}")
    transports: list[int] = []
    lock = threading.Lock()
    original = httpx.HTTPTransport.handle_request

    def spy(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        with lock:
            transports.append(id(self))
        return original(self, request)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx.HTTPTransport, "handle_request", spy)
        for _ in range(3):
            assert http.call({"method": "GET", "url": server.url("/ok")})["status"] == 200
        with ThreadPoolExecutor(4) as pool:  # shared between threads
            results = list(
                pool.map(lambda _: http.call({"method": "GET", "url": server.url("/ok")}), range(8))
            )
    assert all(r["status"] == 200 for r in results)
    assert len(set(transports)) == 1  # one client (one pool) for all eleven calls
    http.close()
    http.close()  # idempotent
    assert http.call({"method": "GET", "url": server.url("/ok")})["status"] == 200  # rebuilt
    http.close()
