"""The engine interface: start and resume runs, returning results (docs/execution.md)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from mfm_dist.canonical import JsonValue
from mfm_dist.config import RunConfig
from mfm_dist.ids import RunId
from mfm_dist.manifest import RunManifest
from mfm_dist.plan import ExecutionPlan
from mfm_dist.results import RunResult


class ExecutionEngine(ABC):
    @abstractmethod
    def start(
        self,
        *,
        plan: ExecutionPlan,
        run_config: RunConfig,
        manifest: RunManifest,
        manifest_id: str,
        initial_context: Mapping[str, JsonValue],
    ) -> RunResult:
        """Validate everything, then record and execute a new run."""

    @abstractmethod
    def resume(self, run_id: RunId) -> RunResult:
        """Continue a run from its last completed states; idempotent once it has finished."""
