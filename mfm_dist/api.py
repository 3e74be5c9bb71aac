"""One call to run, resume or cancel a run in this process (the embedded backend).

    import mfm_dist
    result = mfm_dist.run("fanout_demo", {"items": 50}, fan_out=8, home="./.mfm")

The building blocks (`prepare_run`, `store_manifest`, `LocalEngine`, the stores) stay
public for callers that need more control; these functions are those blocks in their usual
order. On a Celery cluster the matching call is `workers.submit_run(...)` (docs/submission.md).

These are public entry points: without `settings` each reads the environment once
(`Settings.from_env()`: `MFM_HOME`, `MFM_EVENTS_URL`, `MFM_OPERATIONS`, credentials, …) and
passes what it read down; give `settings` to decide instead (docs/configuration.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from mfm_dist.canonical import JsonValue
from mfm_dist.cluster_view import refuse_cluster_takeover
from mfm_dist.config import FanOutJoin, RunConfig
from mfm_dist.engine.cancellation import CancelOutcome, request_cancel
from mfm_dist.engine.lifecycle import labelled_submission, prepare_run, store_manifest
from mfm_dist.engine.local import EventListener, LocalEngine
from mfm_dist.ids import RunId
from mfm_dist.operations import Operation, OperationRegistry
from mfm_dist.results import RunResult
from mfm_dist.settings import Settings
from mfm_dist.stores.urls import Stores, open_stores

Home = str | os.PathLike[str]


def run(
    target: str | Operation,
    input: JsonValue = None,
    *,
    config: RunConfig | None = None,
    fan_out: int | None = None,
    labels: Mapping[str, str] | None = None,
    version: str | None = None,
    run_id: str | None = None,
    registry: OperationRegistry | None = None,
    stores: Stores | None = None,
    home: Home | None = None,
    listener: EventListener | None = None,
    settings: Settings | None = None,
) -> RunResult:
    """Run `target` (a registered op or pipeline id, or an `Operation` object) on `input`
    to its end and return the result; a failed run is a result, not an exception.

    `config` (default `RunConfig()`), or just `fan_out=N` for `FanOutJoin(N)`; `labels` are
    kept with the run for `mfm runs --label` (never in its manifest). The stores are
    `stores`, else the settings' (`home`, else `MFM_HOME`, else `./.mfm`), as the CLI uses."""
    settings = _read_once(settings, registry, stores)
    registry, op_id = _registry_for(target, registry, settings)
    run_config = _config(config, fan_out)
    prepared = prepare_run(registry, op_id, input, run_config, version=version)
    with _stores(stores, home, settings) as opened:
        store_manifest(opened.artifacts, prepared.manifest)
        engine = LocalEngine(opened.events, opened.artifacts, registry, listener=listener)
        return engine.start(
            plan=prepared.plan,
            run_config=prepared.run_config,
            manifest=prepared.manifest,
            manifest_id=prepared.manifest_id,
            initial_context=prepared.initial_context,
            run_id=RunId(run_id) if run_id is not None else None,
            submission=labelled_submission(prepared, input, labels or {}),
        )


def resume(
    run_id: str,
    *,
    registry: OperationRegistry | None = None,
    stores: Stores | None = None,
    home: Home | None = None,
    listener: EventListener | None = None,
    settings: Settings | None = None,
    force: bool = False,
) -> RunResult:
    """Continue a run after a crash (closing its orphaned attempts); a finished run's
    result is returned and nothing is appended. A run submitted to a cluster is refused
    (`run_managed_by_cluster`) unless `force` — its workers are gone for good — and always
    while a worker holds a live lease on one of its attempts (`attempt_lease_live`), as
    `mfm resume` does."""
    settings = _read_once(settings, registry, stores)
    with _stores(stores, home, settings) as opened:
        refuse_cluster_takeover(opened.events, RunId(run_id), force=force)
        engine = LocalEngine(
            opened.events,
            opened.artifacts,
            registry or OperationRegistry.default(settings=settings),
            listener=listener,
        )
        return engine.resume(RunId(run_id))


def cancel(
    run_id: str,
    reason: str,
    *,
    requested_by: str | None = None,
    stores: Stores | None = None,
    home: Home | None = None,
    settings: Settings | None = None,
) -> CancelOutcome:
    """Record the run's cancel request (docs/cancellation.md); its driver ends it."""
    with _stores(stores, home, settings) as opened:
        return request_cancel(opened.events, RunId(run_id), reason, requested_by)


def _read_once(
    settings: Settings | None, registry: OperationRegistry | None, stores: Stores | None
) -> Settings | None:
    """The caller's settings; else, when the registry or the stores are ours to make, the
    environment, read here once for both."""
    if settings is None and (registry is None or stores is None):
        return Settings.from_env()
    return settings


def _registry_for(
    target: str | Operation, registry: OperationRegistry | None, settings: Settings | None
) -> tuple[OperationRegistry, str]:
    registry = registry or OperationRegistry.default(settings=settings)
    if isinstance(target, Operation):
        registry.register(target)
        return registry, str(target.op_id)
    return registry, target


def _config(config: RunConfig | None, fan_out: int | None) -> RunConfig:
    if fan_out is None:
        return config or RunConfig()
    base = config or RunConfig()
    return base.model_copy(update={"execution_mode": FanOutJoin(max_concurrency=fan_out)})


@contextmanager
def _stores(
    stores: Stores | None, home: Home | None, settings: Settings | None
) -> Iterator[Stores]:
    """The caller's stores (left open), or the settings' (under `home`; closed after)."""
    if stores is not None:
        yield stores
        return
    opened = open_stores(home=home, settings=settings)
    try:
        yield opened
    finally:
        opened.close()
