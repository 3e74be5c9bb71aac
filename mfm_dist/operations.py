"""Operations, pipelines and the flattening planner (docs/plans.md).

An `Operation` expands deterministically, without IO, into a `StateGraph` whose
state ids start with the op path it was given. A `Pipeline` flattens its steps
into one plan, ordering steps with edges from each step's sinks to the next
step's sources. Any process holding the same registry re-derives the same plan
from a manifest's `input_params`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.errors import InvalidInput, InvalidPlan, RunError
from mfm_dist.ids import MachineId, OpId, OpPath, StepId
from mfm_dist.plan import DependencyEdge, ExecutionPlan, StateGraph, gc_paused
from mfm_dist.settings import Settings

if TYPE_CHECKING:
    from mfm_dist.io.base import IoFactory
    from mfm_dist.io.router import TransportRegistry
    from mfm_dist.manifest import BuildInfo

ENTRY_POINT_GROUP = "mfm_dist.operations"


class Operation(ABC):
    """A named, versioned recipe that expands into states."""

    op_id: str
    op_version: str = "1"
    description: str = ""

    @abstractmethod
    def expand(self, op_path: OpPath, op_config: JsonValue, run_config: RunConfig) -> StateGraph:
        """Deterministic and IO-free; name states `<op_path>.<local_id>`."""


class PipelineStep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    step_id: StepId
    op_id: OpId
    op_version: str
    op_config: JsonValue = Field(default_factory=dict)


class Pipeline(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    machine_id: MachineId
    pipeline_version: str
    steps: list[PipelineStep]

    @classmethod
    def single(cls, op: Operation, op_config: JsonValue) -> Pipeline:
        """A single op runs as a one-step pipeline: `machine_id = op_id`, `step_id = main`."""
        return cls(
            machine_id=MachineId(op.op_id),
            pipeline_version=op.op_version,
            steps=[
                PipelineStep(
                    step_id=StepId("main"),
                    op_id=OpId(op.op_id),
                    op_version=op.op_version,
                    op_config=op_config,
                )
            ],
        )


class OperationNotFound(InvalidInput):
    def __init__(self, op_id: str, version: str | None) -> None:
        what = op_id if version is None else f"{op_id}@{version}"
        super().__init__("operation_not_found", f"no registered operation {what}")


class OperationRegistry:
    """Resolves `(op_id, op_version)` to operations and names to pipelines."""

    def __init__(self, settings: Settings | None = None) -> None:
        """`settings`: what the registry's IO and manifests take from the configuration
        (the transports' allow-lists, build provenance); default `Settings()`, which
        allows no `exec` program and no `http` host."""
        self.settings = settings if settings is not None else Settings()
        self._ops: dict[str, dict[str, Operation]] = {}
        self._pipelines: dict[str, Pipeline] = {}
        self._loaded: set[str] = set()
        self._transport_hooks: list[Callable[[TransportRegistry], None]] = []

    # -- registration -------------------------------------------------------------------------
    def register(self, op: Operation) -> Operation:
        OpId(op.op_id)
        versions = self._ops.setdefault(op.op_id, {})
        existing = versions.get(op.op_version)
        if existing is not None and type(existing) is not type(op):
            raise InvalidInput(
                "operation_conflict", f"{op.op_id}@{op.op_version} is already registered"
            )
        versions[op.op_version] = op
        return op

    def register_pipeline(self, pipeline: Pipeline) -> Pipeline:
        """Register a named pipeline; `mfm run <machine_id>` runs it."""
        self._pipelines[str(pipeline.machine_id)] = pipeline
        return pipeline

    def load_module(self, module_path: str) -> None:
        """Import `module_path` and call its `register_operations(registry)`."""
        if module_path in self._loaded:
            return
        try:
            module = importlib.import_module(module_path)
        except ImportError as exc:
            raise InvalidInput(
                "operations_module_not_found",
                f"cannot import operations module {module_path}: {exc}",
            ) from None
        hook = getattr(module, "register_operations", None)
        if not callable(hook):
            raise InvalidInput(
                "operations_module_invalid",
                f"{module_path} has no register_operations(registry) function",
            )
        hook(self)
        transports_hook = getattr(module, "register_transports", None)
        if callable(transports_hook):
            self._transport_hooks.append(transports_hook)
        self._loaded.add(module_path)

    def load_modules(self, module_paths: Iterable[str]) -> None:
        for path in module_paths:
            if path.strip():
                self.load_module(path.strip())

    def load_entry_points(self) -> None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            self.load_module(ep.value)

    @classmethod
    def default(
        cls, extra_modules: Iterable[str] = (), *, settings: Settings | None = None
    ) -> OperationRegistry:
        """Entry points, the built-in examples, the settings' operations modules
        (`MFM_OPERATIONS`), then `extra_modules` (e.g. `--ops`); the registry keeps the
        settings for its transports and manifests.

        A public entry point: without `settings` it reads the environment
        (`Settings.from_env()`); programs pass the settings they read at their start."""
        config = settings if settings is not None else Settings.from_env()
        registry = cls(config)
        registry.load_entry_points()
        registry.load_module("mfm_dist.examples")
        registry.load_modules(config.operations)
        registry.load_modules(extra_modules)
        return registry

    def build_transports(self) -> TransportRegistry:
        """`TransportRegistry.default()` configured by the settings, plus every loaded
        module's `register_transports(transports)` hook: how users add their own transports."""
        from mfm_dist.io.router import TransportRegistry

        transports: TransportRegistry = TransportRegistry.default(self.settings.transports)
        for hook in self._transport_hooks:
            hook(transports)
        return transports

    def build_info(self) -> BuildInfo:
        """The build record of a manifest this process writes: the working directory's
        provenance, with the settings' `MFM_GIT_COMMIT` / `MFM_ENV_ALLOWLIST`."""
        from mfm_dist.manifest import current_build_info

        return current_build_info(provenance=self.settings.provenance)

    def io_factory(self) -> IoFactory:
        """The default IO factory with this registry's transports (built on first Live use)."""
        from mfm_dist.io.factory import default_io_factory

        return default_io_factory(build=self.build_transports)

    # -- lookup -------------------------------------------------------------------------------
    def get(self, op_id: str, op_version: str | None = None) -> Operation:
        versions = self._ops.get(op_id)
        if not versions:
            raise OperationNotFound(op_id, op_version)
        if op_version is None:
            return versions[max(versions, key=_version_key)]
        op = versions.get(op_version)
        if op is None:
            raise OperationNotFound(op_id, op_version)
        return op

    def pipeline(self, name: str) -> Pipeline | None:
        return self._pipelines.get(name)

    def operations(self) -> list[Operation]:
        return [op for vs in self._ops.values() for op in vs.values()]

    def pipelines(self) -> list[Pipeline]:
        return list(self._pipelines.values())

    # -- planning -----------------------------------------------------------------------------
    def plan_for(self, pipeline: Pipeline, run_config: RunConfig) -> ExecutionPlan:
        """Flatten a pipeline into one validated plan."""
        with gc_paused():  # a plan of 100,000 states is built twice as fast
            return self._plan_for(pipeline, run_config)

    def _plan_for(self, pipeline: Pipeline, run_config: RunConfig) -> ExecutionPlan:
        graph = StateGraph()
        previous_sinks: list[Any] = []
        for step in pipeline.steps:
            op = self.get(str(step.op_id), step.op_version)
            op_path = OpPath(f"{pipeline.machine_id}.{step.step_id}")
            sub = op.expand(op_path, step.op_config, run_config)
            prefix = f"{op_path}."
            for node in sub.states:
                if not str(node.id).startswith(prefix):
                    raise InvalidPlan(
                        f"{op.op_id} produced state {node.id} outside {op_path}",
                        {"reason": "state_outside_op_path", "state_id": str(node.id)},
                    )
            graph.states.extend(sub.states)
            graph.edges.extend(sub.edges)
            ids = [n.id for n in sub.states]
            has_in = {str(e.to) for e in sub.edges}
            has_out = {str(e.from_) for e in sub.edges}
            sources = [s for s in ids if str(s) not in has_in]
            for sink in previous_sinks:
                for source in sources:
                    graph.edges.append(DependencyEdge(from_=sink, to=source))
            if ids:  # an empty step must not drop the order between its neighbours
                previous_sinks = [s for s in ids if str(s) not in has_out]
        plan = ExecutionPlan(op_id=OpId(pipeline.machine_id), graph=graph)
        plan.validate()
        return plan

    def plan_from_input_params(
        self, input_params: JsonValue, run_config: RunConfig
    ) -> ExecutionPlan:
        """Re-derive a run's plan from its manifest's `{"pipeline": …, "input": …}`."""
        if not isinstance(input_params, dict) or "pipeline" not in input_params:
            raise RunError(
                "manifest_input_params_invalid", "manifest input_params lacks a pipeline"
            )
        try:
            pipeline = Pipeline.model_validate(input_params["pipeline"])
        except ValueError:
            raise RunError(
                "manifest_input_params_invalid", "manifest pipeline does not decode"
            ) from None
        return self.plan_for(pipeline, run_config)


def _version_key(version: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def input_params_for(pipeline: Pipeline, run_input: JsonValue) -> JsonValue:
    return {"pipeline": pipeline.model_dump(mode="json"), "input": run_input}
