"""The default `IoFactory`: `LiveIo` or `ReplayIo` by `run_config.io_mode`.

The transport registry is built lazily, on the first Live attempt, so a
replay never constructs (or reads the configuration of) any transport.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mfm_dist.config import IoMode
from mfm_dist.io.base import AttemptScope, IoFactory, IoProvider
from mfm_dist.io.live import LiveIo
from mfm_dist.io.replay import ReplayIo
from mfm_dist.io.router import TransportRegistry


class DefaultIoFactory:
    """Callable `AttemptScope -> IoProvider`; one instance per engine/worker process."""

    def __init__(
        self,
        transports: TransportRegistry | None = None,
        build: Callable[[], TransportRegistry] | None = None,
    ) -> None:
        self._transports = transports
        self._build = build or TransportRegistry.default
        self._lock = threading.Lock()

    def transports(self) -> TransportRegistry:
        with self._lock:
            if self._transports is None:
                self._transports = self._build()
            return self._transports

    def __call__(self, scope: AttemptScope) -> IoProvider:
        if scope.run_config.io_mode == IoMode.REPLAY:
            return ReplayIo(scope)
        return LiveIo(scope, self.transports())


def default_io_factory(
    transports: TransportRegistry | None = None,
    build: Callable[[], TransportRegistry] | None = None,
) -> IoFactory:
    """The factory the engine uses. Without `transports`, `build` (default:
    `TransportRegistry.default`) makes the registry on the first Live attempt."""
    return DefaultIoFactory(transports, build)
