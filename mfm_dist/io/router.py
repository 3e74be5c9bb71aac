"""Transports and namespace routing (docs/io-and-replay.md).

A transport is anything with `call(request) -> response` (sync or async). The
registry maps dotted groups to transports; a namespace is served by the longest
group that equals it or prefixes it followed by `.` (`http` serves `http.prices`,
but not `httpx`).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from mfm_dist.canonical import JsonValue
from mfm_dist.errors import ErrorCategory, InvalidInput, IoError
from mfm_dist.secrets import is_secret_string
from mfm_dist.settings import TransportSettings


@runtime_checkable
class Transport(Protocol):
    """`call` returns the JSON response, or an awaitable of it."""

    def call(self, request: JsonValue) -> JsonValue | Awaitable[JsonValue]: ...


class FunctionTransport:
    """Adapts a plain callable (sync or async) to the `Transport` protocol."""

    def __init__(self, fn: Callable[[JsonValue], JsonValue | Awaitable[JsonValue]]) -> None:
        self._fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)

    def call(self, request: JsonValue) -> JsonValue | Awaitable[JsonValue]:
        return self._fn(request)


def is_async_transport(transport: Transport) -> bool:
    if isinstance(transport, FunctionTransport):
        return transport.is_async
    return inspect.iscoroutinefunction(transport.call)


def _group_is_valid(group: str) -> bool:
    return (
        isinstance(group, str)
        and bool(group)
        and all(part and part == part.strip() for part in group.split("."))
        and not is_secret_string(group)
    )


class TransportRegistry:
    """Namespace groups → transports. Thread-safe; built once per deployment."""

    def __init__(self) -> None:
        self._groups: dict[str, Transport] = {}
        self._lock = threading.Lock()

    def register(
        self,
        group: str,
        transport: Transport | Callable[[JsonValue], JsonValue | Awaitable[JsonValue]],
    ) -> None:
        if not _group_is_valid(group):
            raise InvalidInput(
                "io_transport_group_invalid",
                "a transport group must be a non-empty dotted name without empty parts",
            )
        if not isinstance(transport, Transport):
            if not callable(transport):
                raise InvalidInput(
                    "io_transport_invalid", "a transport needs a call(request) method"
                )
            transport = FunctionTransport(transport)
        with self._lock:
            if group in self._groups:
                raise InvalidInput(
                    "io_transport_group_duplicate",
                    f"transport group {group} is already registered",
                    details={"group": group},
                )
            self._groups[group] = transport

    def groups(self) -> list[str]:
        with self._lock:
            return sorted(self._groups)

    def resolve(self, namespace: str) -> Transport:
        """The transport of the longest matching group; `io_unknown_namespace` otherwise."""
        with self._lock:
            best: str | None = None
            if isinstance(namespace, str):
                for group in self._groups:
                    matches = namespace == group or namespace.startswith(group + ".")
                    if matches and (best is None or len(group) > len(best)):
                        best = group
            if best is not None:
                return self._groups[best]
        shown = isinstance(namespace, str) and not is_secret_string(namespace)
        raise IoError(
            "io_unknown_namespace",
            f"no transport registered for namespace {namespace}"
            if shown
            else "no transport registered for this namespace",
            category=ErrorCategory.PARSING_INPUT,
            details={"namespace": namespace} if shown else None,
        )

    @classmethod
    def default(cls, settings: TransportSettings | None = None) -> TransportRegistry:
        """`exec` and `http`, with the allow-lists of `settings` (`MFM_EXEC_ALLOW` /
        `MFM_HTTP_ALLOW_HOSTS`, read where the program started); without settings they
        allow nothing."""
        from mfm_dist.io.transports.exec import ExecTransport, parse_allow
        from mfm_dist.io.transports.http import HttpTransport

        config = settings if settings is not None else TransportSettings()
        registry = cls()
        registry.register("exec", ExecTransport(parse_allow(config.exec_allow)))
        registry.register("http", HttpTransport(config.http_allow_hosts))
        return registry
