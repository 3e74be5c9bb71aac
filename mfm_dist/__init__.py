"""mfm-dist: reproducible, auditable workflow runs — embedded, or scaled out on Celery.

The public API mirrors the reference runtime's names (docs/README.md#reference-names); everything a
user needs to define operations and run them is importable from here.
"""

from mfm_dist.api import cancel, resume, run
from mfm_dist.artifacts import ArtifactKind, ArtifactStore, OtherArtifactKind, get_json, put_json
from mfm_dist.canonical import (
    JsonValue,
    artifact_id_of_bytes,
    artifact_id_of_json,
    canonical_bytes,
    parse_canonical,
)
from mfm_dist.config import (
    Duration,
    EventProfileLevel,
    ExponentialBackoff,
    FanOutJoin,
    FixedBackoff,
    IoMode,
    RetryPolicy,
    RunConfig,
)
from mfm_dist.context import StagedContext, StateContext
from mfm_dist.engine import ExecutionEngine, LocalEngine, PreparedRun, RunHistory, prepare_run
from mfm_dist.engine.lifecycle import store_manifest
from mfm_dist.errors import (
    ConcurrencyError,
    ContextError,
    Corruption,
    ErrorCategory,
    ErrorInfo,
    InvalidInput,
    InvalidPlan,
    IoError,
    MfmError,
    MissingFact,
    MissingFactKey,
    NotFound,
    RunError,
    StateError,
    StorageError,
)
from mfm_dist.events import (
    DomainEvent,
    EventEnvelope,
    KernelEvent,
    RunCompleted,
    RunStarted,
    RunStatus,
    StateCompleted,
    StateEntered,
    StateFailed,
)
from mfm_dist.ids import ArtifactId, ErrorCode, OpId, OpPath, RunId, StateId
from mfm_dist.io.base import AttemptScope, FactIndex, IoCall, IoFactory, IoProvider, IoResult
from mfm_dist.manifest import BuildInfo, RunManifest
from mfm_dist.operations import Operation, OperationRegistry, Pipeline, PipelineStep
from mfm_dist.plan import DependencyEdge, ExecutionPlan, StateGraph, StateNode
from mfm_dist.results import RunPhase, RunResult, RunSummary
from mfm_dist.settings import Settings, SettingsError
from mfm_dist.state import (
    EventRecorder,
    FnState,
    IdempotencyKey,
    SideEffects,
    SnapshotPolicy,
    State,
    StateMeta,
    StateOutcome,
    state,
)
from mfm_dist.stores import EventStore, InMemoryArtifactStore, InMemoryEventStore, open_stores

__version__ = "0.1.0"

__all__ = [
    "ArtifactId",
    "ArtifactKind",
    "ArtifactStore",
    "AttemptScope",
    "BuildInfo",
    "ConcurrencyError",
    "ContextError",
    "Corruption",
    "DependencyEdge",
    "DomainEvent",
    "Duration",
    "ErrorCategory",
    "ErrorCode",
    "ErrorInfo",
    "EventEnvelope",
    "EventProfileLevel",
    "EventRecorder",
    "EventStore",
    "ExecutionEngine",
    "ExecutionPlan",
    "ExponentialBackoff",
    "FactIndex",
    "FanOutJoin",
    "FixedBackoff",
    "FnState",
    "IdempotencyKey",
    "InMemoryArtifactStore",
    "InMemoryEventStore",
    "InvalidInput",
    "InvalidPlan",
    "IoCall",
    "IoError",
    "IoFactory",
    "IoMode",
    "IoProvider",
    "IoResult",
    "JsonValue",
    "KernelEvent",
    "LocalEngine",
    "MfmError",
    "MissingFact",
    "MissingFactKey",
    "NotFound",
    "OpId",
    "OpPath",
    "Operation",
    "OperationRegistry",
    "OtherArtifactKind",
    "Pipeline",
    "PipelineStep",
    "PreparedRun",
    "RetryPolicy",
    "RunCompleted",
    "RunConfig",
    "RunError",
    "RunHistory",
    "RunId",
    "RunManifest",
    "RunPhase",
    "RunResult",
    "RunStarted",
    "RunStatus",
    "RunSummary",
    "Settings",
    "SettingsError",
    "SideEffects",
    "SnapshotPolicy",
    "StagedContext",
    "State",
    "StateCompleted",
    "StateContext",
    "StateEntered",
    "StateError",
    "StateFailed",
    "StateGraph",
    "StateId",
    "StateMeta",
    "StateNode",
    "StateOutcome",
    "StorageError",
    "artifact_id_of_bytes",
    "artifact_id_of_json",
    "cancel",
    "canonical_bytes",
    "get_json",
    "open_stores",
    "parse_canonical",
    "prepare_run",
    "put_json",
    "resume",
    "run",
    "state",
    "store_manifest",
]
