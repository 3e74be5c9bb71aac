"""Run manifests: what was asked for, and by which build (docs/plans.md#manifests).

The `build` field keeps the reference's field names; for Python they hold:

* `git_commit`: `MFM_GIT_COMMIT`, else `git rev-parse HEAD` of the working directory;
* `cargo_lock_hash`: SHA-256 of the first lock file found (`uv.lock`, `poetry.lock`,
  `requirements.lock`, `requirements.txt`, `pylock.toml`) in the working directory;
* `flake_lock_hash`: SHA-256 of `flake.lock` when present;
* `rustc_version`: the interpreter, e.g. `CPython 3.11.7`;
* `target_triple`: `<machine>-<system>`, e.g. `x86_64-linux`;
* `env_allowlist`: the names (never values) listed in `MFM_ENV_ALLOWLIST`.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mfm_dist.canonical import JsonValue, artifact_id_of_json, canonical_bytes
from mfm_dist.config import RunConfig
from mfm_dist.ids import ArtifactId, OpId
from mfm_dist.settings import Provenance

LOCK_FILES = ("uv.lock", "poetry.lock", "requirements.lock", "requirements.txt", "pylock.toml")


class BuildInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    git_commit: str | None = None
    cargo_lock_hash: str | None = None
    flake_lock_hash: str | None = None
    rustc_version: str | None = None
    target_triple: str | None = None
    env_allowlist: list[str] = Field(default_factory=list)


class RunManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    op_id: OpId
    op_version: str
    input_params: JsonValue
    run_config: RunConfig
    build: BuildInfo = BuildInfo()

    def to_json(self) -> JsonValue:
        return self.model_dump(mode="json")

    def canonical(self) -> bytes:
        """Canonical bytes; raises `secrets_detected` / float errors for bad input."""
        return canonical_bytes(self.to_json(), "manifest")

    def manifest_id(self) -> ArtifactId:
        return artifact_id_of_json(self.to_json(), "manifest")


def _file_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def current_build_info(cwd: Path | None = None, provenance: Provenance | None = None) -> BuildInfo:
    """Provenance of the current process, recorded in every manifest. `provenance` (from
    the settings: `MFM_GIT_COMMIT`, `MFM_ENV_ALLOWLIST`) overrides the commit `git` reports
    and names the allow-listed variables; without it, `git` is asked and the list is empty.

    Computed once per process and directory: a process runs the code it loaded, whatever
    happens to the checkout later, and a worker accepting thousands of submissions must
    not start `git` and hash lock files for each."""
    given = provenance if provenance is not None else Provenance()
    return _build_info(
        (cwd or Path.cwd()).resolve(), given.git_commit, tuple(sorted(given.env_allowlist))
    )


@functools.lru_cache(maxsize=16)
def _build_info(root: Path, git_commit: str | None, env_allowlist: tuple[str, ...]) -> BuildInfo:
    lock_hash = next((h for name in LOCK_FILES if (h := _file_hash(root / name)) is not None), None)
    return BuildInfo(
        git_commit=git_commit or _git_commit(root),
        cargo_lock_hash=lock_hash,
        flake_lock_hash=_file_hash(root / "flake.lock"),
        rustc_version=f"{platform.python_implementation()} {platform.python_version()}",
        target_triple=f"{platform.machine()}-{platform.system().lower()}",
        env_allowlist=list(env_allowlist),
    )
