"""Helpers for engine tests: ad-hoc operations and one-call runs on any stores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mfm_dist import (
    LocalEngine,
    Operation,
    OperationRegistry,
    RunConfig,
    RunResult,
    StateGraph,
    prepare_run,
    store_manifest,
)
from mfm_dist.artifacts import ArtifactStore
from mfm_dist.ids import OpPath
from mfm_dist.settings import Settings
from mfm_dist.state import State
from mfm_dist.stores import InMemoryArtifactStore, InMemoryEventStore
from mfm_dist.stores.base import EventStore


class GraphOp(Operation):
    """An operation built from local state names, states and edges (test fixture)."""

    def __init__(
        self,
        op_id: str,
        states: dict[str, State] | Callable[[Any], dict[str, State]],
        edges: list[tuple[str, str]] | Callable[[Any], list[tuple[str, str]]] = (),  # type: ignore[assignment]
        version: str = "1",
    ) -> None:
        self.op_id = op_id
        self.op_version = version
        self._states = states
        self._edges = edges

    def expand(self, op_path: OpPath, op_config: Any, run_config: RunConfig) -> StateGraph:
        states = self._states(op_config) if callable(self._states) else self._states
        edges = self._edges(op_config) if callable(self._edges) else self._edges
        graph = StateGraph()
        for local, st in states.items():
            graph.add(f"{op_path}.{local}", st)
        for a, b in edges:
            graph.edge(f"{op_path}.{a}", f"{op_path}.{b}")
        return graph


def registry_with(*ops: Operation) -> OperationRegistry:
    """The examples and `ops`, with the transports the test's environment allows (a test is
    a program: it reads its settings where it starts)."""
    reg = OperationRegistry(Settings.from_env())
    reg.load_module("mfm_dist.examples")
    for op in ops:
        reg.register(op)
    return reg


@dataclass
class Harness:
    registry: OperationRegistry
    events: EventStore = field(default_factory=InMemoryEventStore)
    artifacts: ArtifactStore = field(default_factory=InMemoryArtifactStore)

    def engine(self, **kwargs: Any) -> LocalEngine:
        kwargs.setdefault("io_factory", self.registry.io_factory())  # its transports' settings
        return LocalEngine(self.events, self.artifacts, self.registry, **kwargs)

    def run(
        self, target: str, run_input: Any = None, config: RunConfig | None = None, **kwargs: Any
    ) -> RunResult:
        cfg = config or RunConfig()
        prepared = prepare_run(
            self.registry, target, run_input if run_input is not None else {}, cfg
        )
        store_manifest(self.artifacts, prepared.manifest)
        return self.engine(**kwargs).start(
            plan=prepared.plan,
            run_config=cfg,
            manifest=prepared.manifest,
            manifest_id=prepared.manifest_id,
            initial_context=prepared.initial_context,
        )

    def kinds(self, run_id: str) -> list[str]:
        """Event names in order (kernel variant or domain name)."""
        from mfm_dist.events import event_name

        return [event_name(e.event) for e in self.events.read_range(run_id)]  # type: ignore[arg-type]
