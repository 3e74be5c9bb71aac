"""The `http` transport: JSON GET/POST to allow-listed hosts.

Request: `{"method":"GET"|"POST", "url", "json", "headers", "timeout_ms"}`;
response: `{"status": int, "body": <json>}`. Hosts come from
`MFM_HTTP_ALLOW_HOSTS` (`host` or `host:port`, comma-separated; empty disables
http). Redirects are not followed (they could leave the allow-list) and the
environment is not trusted (no proxies or netrc credentials are injected).

Headers are sent but never persisted: they are not part of the response, and
`LiveIo` does not persist requests. Callers must never put header values (or
anything else secret) in a fact key. Errors never echo bodies, headers or the
URL: they carry only method, host, status, limits and counts.

Connections: one `httpx.Client` serves every call of a transport (its pool keeps
connections alive between calls; httpx clients may be shared between threads), built on
first use and released by `close()`. A caller may inject its own `client` (then it is
the caller's to configure and close) or an httpx `transport` the built client sends
through (`httpx.MockTransport` in tests) — httpx's own seam, so no socket is needed to
test what this transport does with a response.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mfm_dist.canonical import JsonValue
from mfm_dist.errors import ErrorCategory, InvalidInput, RateLimited, TransportError
from mfm_dist.secrets import shown

if TYPE_CHECKING:
    import httpx

MIB = 1 << 20
DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 600_000
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    method: Literal["GET", "POST"]
    url: str = Field(min_length=1)
    json_body: JsonValue = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_ms: int = Field(default=DEFAULT_TIMEOUT_MS, ge=1, le=MAX_TIMEOUT_MS)


class HttpError(TransportError):
    """An `http_*` failure; details never hold bodies, headers or the URL."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        category: ErrorCategory | None = None,
        **details: Any,
    ) -> None:
        super().__init__(code, message, retryable=retryable, category=category, details=details)


def _request_invalid(reason: str, fields: Sequence[str] = ()) -> HttpError:
    return HttpError(
        "http_request_invalid",
        f"invalid http request: {reason}",
        category=ErrorCategory.PARSING_INPUT,
        fields=sorted(set(fields)),
    )


def parse_allow_hosts(spec: str) -> set[tuple[str, int | None]]:
    """`a.example,b.example:8443,[::1]:80` → {(host, port or None)}."""
    allowed: set[tuple[str, int | None]] = set()
    for raw in spec.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            parts = urlsplit(f"//{entry}")
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not host or parts.path or parts.username is not None:
            raise InvalidInput(
                "http_allow_invalid", "MFM_HTTP_ALLOW_HOSTS entries must be host or host:port"
            )
        allowed.add((host, port))
    return allowed


class HttpTransport:
    """JSON over HTTP with an allow-list, a per-call timeout and a response size cap.

    `client`: an `httpx.Client` to send through (the caller configures and closes it; the
    transport still refuses redirects per request). `transport`: an httpx transport for
    the client this transport builds itself (e.g. `httpx.MockTransport`). Without either,
    the built client uses httpx's own transport, never trusting the environment."""

    def __init__(
        self,
        allow_hosts: str | Sequence[str],
        *,
        max_response_bytes: int = MIB,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if client is not None and transport is not None:
            raise TypeError("give HttpTransport a client or a transport, not both")
        spec = allow_hosts if isinstance(allow_hosts, str) else ",".join(allow_hosts)
        self.allow = parse_allow_hosts(spec)
        self.max_response_bytes = max_response_bytes
        self._given = client
        self._transport = transport
        self._owned: httpx.Client | None = None
        self._owner_pid = 0
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        """The injected client, else the one this transport built (once per process: a
        forked child must not share its parent's connections)."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._owned is None or self._owner_pid != os.getpid():
                import httpx

                self._owned = httpx.Client(
                    follow_redirects=False, trust_env=False, transport=self._transport
                )
                self._owner_pid = os.getpid()
            return self._owned

    def close(self) -> None:
        """Release the connections of the client this transport built (an injected client
        is left to its owner). The transport still works after: the next call builds a
        new client."""
        with self._lock:
            owned, self._owned = self._owned, None
        if owned is not None and self._owner_pid == os.getpid():
            owned.close()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HttpTransport:
        """Configured from `MFM_HTTP_ALLOW_HOSTS` in `environ`, a mapping the caller read
        (programs use `TransportRegistry.default(settings.transports)`)."""
        return cls(environ.get("MFM_HTTP_ALLOW_HOSTS", ""))

    def _parse(self, request: JsonValue) -> tuple[HttpRequest, str, int]:
        if not isinstance(request, dict):
            raise _request_invalid("the request must be an object")
        try:
            req = HttpRequest.model_validate(request)
        except ValidationError as exc:
            known = {"method", "url", "json", "headers", "timeout_ms"}
            fields = [str(e["loc"][0]) for e in exc.errors() if e["loc"] and e["loc"][0] in known]
            raise _request_invalid("bad or missing fields", fields) from None
        if req.method == "GET" and req.json_body is not None:
            raise _request_invalid("a GET request has no json body", ["json"])
        try:
            parts = urlsplit(req.url)
            host, port = parts.hostname, parts.port
        except ValueError:
            raise _request_invalid("the url is malformed", ["url"]) from None
        if parts.scheme not in _DEFAULT_PORTS or not host:
            raise _request_invalid("the url must be http(s)://host/…", ["url"])
        if parts.username is not None or parts.password is not None:
            raise _request_invalid("credentials in the url are not allowed", ["url"])
        return req, host.lower(), port or _DEFAULT_PORTS[parts.scheme]

    def call(self, request: JsonValue) -> JsonValue:
        req, host, port = self._parse(request)
        where: dict[str, Any] = {"method": req.method, "host": shown(host), "port": port}
        if (host, None) not in self.allow and (host, port) not in self.allow:
            raise HttpError(
                "http_host_not_allowed",
                "host is not allowed" if self.allow else "http is disabled (no allowed hosts)",
                category=ErrorCategory.PARSING_INPUT,
                **where,
            )
        try:
            import httpx
        except ImportError:  # pragma: no cover - httpx ships with the `io` extra
            raise HttpError(
                "http_transport_failed", "httpx is not installed (pip install 'mfm-dist[io]')"
            ) from None
        deadline = time.monotonic() + req.timeout_ms / 1000
        timeout = httpx.Timeout(req.timeout_ms / 1000)
        body = bytearray()
        client = self._client()
        try:
            with client.stream(
                req.method,
                req.url,
                json=req.json_body if req.method == "POST" else None,
                headers=req.headers,
                timeout=timeout,
                follow_redirects=False,
            ) as resp:
                status = resp.status_code
                if not 200 <= status < 300:
                    raise _status_error(status, where)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                    raise self._too_large(where, int(declared))
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise self._too_large(where, len(body))
                    if time.monotonic() > deadline:
                        raise self._timeout(where, req.timeout_ms)
        except httpx.TimeoutException:
            raise self._timeout(where, req.timeout_ms) from None
        except httpx.HTTPError as exc:
            raise HttpError(
                "http_transport_failed",
                f"http request failed ({type(exc).__name__})",
                retryable=True,
                **where,
            ) from None
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            # httpx rejects bad header names/values or un-encodable json: say which, not what.
            raise _request_invalid(
                f"the request could not be sent ({type(exc).__name__})"
            ) from None
        if not body and status == 204:
            parsed: JsonValue = None
        else:
            try:
                parsed = orjson.loads(bytes(body))
            except orjson.JSONDecodeError:
                raise HttpError(
                    "http_response_invalid_json",
                    "response body is not JSON",
                    status=status,
                    body_bytes=len(body),
                    **where,
                ) from None
        return {"status": status, "body": parsed}

    def _too_large(self, where: dict[str, Any], count: int) -> HttpError:
        return HttpError(
            "http_response_too_large",
            "response body exceeds the limit",
            limit_bytes=self.max_response_bytes,
            body_bytes=count,
            **where,
        )

    def _timeout(self, where: dict[str, Any], timeout_ms: int) -> HttpError:
        return HttpError(
            "http_timeout",
            f"no complete response within {timeout_ms} ms",
            retryable=True,
            timeout_ms=timeout_ms,
            **where,
        )


def _status_error(status: int, where: dict[str, Any]) -> HttpError | RateLimited:
    """Non-2xx: 429 and 5xx are retryable; the body is never read."""
    details = {**where, "status": status}
    if status == 429:
        return RateLimited("http_status", "http status 429", retryable=True, details=details)
    return HttpError("http_status", f"http status {status}", retryable=status >= 500, **details)
