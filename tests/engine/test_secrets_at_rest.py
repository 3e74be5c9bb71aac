"""No secret ever reaches a stored byte (docs/secrets.md), on the embedded SQLite + file stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfm_dist import FnState, RunConfig, StateError
from mfm_dist.errors import MfmError
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.sqlite import SqliteEventStore
from support.engine_helpers import GraphOp, Harness, registry_with

SECRET = "hunter2-very-secret"


def harness(tmp_path: Path) -> Harness:
    async def leaky_event(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("ok", 1)
        await rec.emit("note", {"password": SECRET})

    async def leaky_error(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise StateError("leak", f"password={SECRET}", details={"api_key": SECRET})

    async def leaky_foreign_error(ctx, io, rec):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"Authorization: Bearer {SECRET}")

    async def leaky_context(ctx, io, rec):  # type: ignore[no-untyped-def]
        ctx.set("creds", {"access_token": SECRET})

    async def leaky_fact(ctx, io, rec):  # type: ignore[no-untyped-def]
        await io.record_value("k", {"secret_key": SECRET})

    ops = [
        GraphOp("ev", {"a": FnState(leaky_event)}),
        GraphOp("err", {"a": FnState(leaky_error)}),
        GraphOp("ferr", {"a": FnState(leaky_foreign_error)}),
        GraphOp("ctx", {"a": FnState(leaky_context)}),
        GraphOp("fact", {"a": FnState(leaky_fact)}),
    ]
    return Harness(
        registry_with(*ops),
        events=SqliteEventStore(tmp_path / "events.sqlite3"),
        artifacts=FileArtifactStore(tmp_path / "artifacts"),
    )


def all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_secrets_never_reach_the_stores(tmp_path: Path) -> None:
    h = harness(tmp_path)
    for op in ("ev", "err", "ferr", "ctx", "fact"):
        h.run(op, {})
    # Secrets in the initial context / manifest are refused before anything is stored.
    with pytest.raises(MfmError) as info:
        h.run("ev", {"password": SECRET})
    assert info.value.code == "secrets_detected"
    with pytest.raises(MfmError):
        h.run("ev", {"note": f"bearer {SECRET}"})
    h.events.close()
    blob = all_bytes(tmp_path)
    assert SECRET.encode() not in blob
    assert b"hunter2" not in blob
    # Sanity: the runs were recorded.
    assert len(SqliteEventStore(tmp_path / "events.sqlite3").list_runs()) == 5


def test_failed_states_recorded_with_redacted_errors(tmp_path: Path) -> None:
    h = harness(tmp_path)
    result = h.run("err", {})
    assert result.error is not None
    assert result.error.message == "error details redacted" and result.error.details is None
    result = h.run("ev", {}, RunConfig())
    assert result.error is not None and result.error.code == "domain_event_invalid"
