"""Finding a run or an artifact from what a person typed: a full id, or a unique prefix of
at least `MIN_PREFIX` characters (e.g. the 12-character snapshot ids `mfm status` prints).

Lookups are indexed by every store (`EventStore.runs_with_prefix`,
`ArtifactStore.ids_with_prefix`): a range on the SQLite primary key, `ZRANGEBYLEX` on the
Redis run-id index, a listing of one shard directory or one S3 `Prefix`. An ambiguous prefix
is `id_prefix_ambiguous` (the candidates in the message and in `details`); a prefix nothing
starts with is the usual not-found error (`run_not_found`, `artifact_not_found`).
"""

from __future__ import annotations

import re

from mfm_dist.artifacts import ArtifactStore
from mfm_dist.engine.snapshot_links import snapshots_behind_links
from mfm_dist.errors import InvalidId, InvalidInput, NotFound
from mfm_dist.ids import ArtifactId, RunId
from mfm_dist.stores.base import EventStore

MIN_PREFIX = 8
SHOWN_CANDIDATES = 5
_RUN_PREFIX_RE = re.compile(r"^[0-9a-f-]{1,36}$")
_ARTIFACT_PREFIX_RE = re.compile(r"^[0-9a-f]{1,64}$")


def _check_prefix(text: str, kind: str, pattern: re.Pattern[str]) -> None:
    if not pattern.match(text):
        raise InvalidId(kind, text)
    if len(text) < MIN_PREFIX:
        raise InvalidInput(
            "id_prefix_too_short",
            f"{kind} prefix {text} is too short: give at least {MIN_PREFIX} characters",
            details={"prefix": text, "min_length": MIN_PREFIX},
        )


def _ambiguous(kind: str, text: str, found: list[str], more: bool) -> InvalidInput:
    shown = ", ".join(found[:SHOWN_CANDIDATES])
    rest = len(found) - SHOWN_CANDIDATES
    if rest > 0 or more:
        shown += f" and {'more' if more else rest}"
    count = f"{len(found)}+" if more else str(len(found))
    return InvalidInput(
        "id_prefix_ambiguous",
        f"{kind} prefix {text} matches {count} {kind}s: {shown}; give more of it",
        details={"prefix": text, "candidates": found, "more": more},
    )


def resolve_run_id(events: EventStore, text: str, *, limit: int = 10) -> RunId:
    """The run `text` names: a full run id as is (whether stored or not), else the one run
    whose id starts with it."""
    if RunId._check(text):
        return RunId(text)
    _check_prefix(text, "run id", _RUN_PREFIX_RE)
    found = [str(r) for r in events.runs_with_prefix(text, limit + 1)]
    if not found:
        raise NotFound(f"run {text} not found", code="run_not_found")
    if len(found) > 1:
        raise _ambiguous("run id", text, found[:limit], len(found) > limit)
    return RunId(found[0])


def resolve_artifact_id(artifacts: ArtifactStore, text: str, *, limit: int = 10) -> ArtifactId:
    """The artifact `text` names: a full artifact id as is, else the one stored artifact
    whose id starts with it (a snapshot stored as a link counts as stored,
    docs/storage.md#snapshot-links)."""
    if ArtifactId._check(text):
        return ArtifactId(text)
    _check_prefix(text, "artifact id", _ARTIFACT_PREFIX_RE)
    found = [str(a) for a in artifacts.ids_with_prefix(text, limit + 1)]
    found = snapshots_behind_links(artifacts, found, text)
    if not found:
        where = artifacts.url or "the artifact store"
        raise NotFound(f"no artifact {text} in {where}", code="artifact_not_found")
    if len(found) > 1:
        raise _ambiguous("artifact id", text, found[:limit], len(found) > limit)
    return ArtifactId(found[0])
