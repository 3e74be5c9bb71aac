"""Engines: the shared attempt/merge/lifecycle core and the embedded `LocalEngine`."""

from mfm_dist.engine.base import ExecutionEngine
from mfm_dist.engine.history import RunHistory
from mfm_dist.engine.lifecycle import PreparedRun, load_run, prepare_run, store_manifest
from mfm_dist.engine.local import LocalEngine

__all__ = [
    "ExecutionEngine",
    "LocalEngine",
    "PreparedRun",
    "RunHistory",
    "load_run",
    "prepare_run",
    "store_manifest",
]
