"""The embedded artifact store: content-addressed files under one root (docs/storage.md).

Layout: `<root>/<id[:2]>/<id>`, one immutable file per artifact. A put writes a
temp file in the object's directory, fsyncs it, then creates the final name
with `os.link` — which fails rather than overwrite — and fsyncs the directory,
so a reader sees either no object or the complete bytes, and an acknowledged
put survives a crash. Concurrent puts of the same bytes (threads or processes)
all succeed: the losers find the winner's object and verify its bytes equal
theirs; a mismatch is corruption and is reported, never papered over.

The kind is not stored: it never changes the id and no read path needs it, so a
sidecar would be a second file to keep durable for nothing.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import suppress
from pathlib import Path

from mfm_dist.artifacts import ArtifactStore, KindLike
from mfm_dist.errors import Corruption, InvalidId, NotFound, StorageError
from mfm_dist.ids import ArtifactId

TEMP_PREFIX = ".tmp-"
_OBJECT_MODE = 0o444  # artifacts are immutable
# errnos meaning "this filesystem cannot hard-link": fall back to a no-overwrite rename.
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


_HEX = frozenset("0123456789abcdef")


def _is_hex_prefix(text: str) -> bool:
    return 0 < len(text) <= 64 and set(text) <= _HEX


def _is_artifact_name(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileArtifactStore(ArtifactStore):
    """Create-only artifact files under `root` (`file:///path`).

    With `read_only=True` nothing is created (a missing root holds no artifacts) and a put
    raises `store_read_only`: what the CLI's read commands use, so an archived, read-only
    home can be audited."""

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root.as_posix()}"
        self.read_only = read_only
        if read_only:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise StorageError(
                "artifact_store_unavailable", "cannot create the artifact store directory"
            ) from None

    def object_path(self, artifact_id: str) -> Path:
        """Where `artifact_id` lives: `<root>/<id[:2]>/<id>` (the id is validated first)."""
        aid = ArtifactId(artifact_id)
        return self.root / aid[:2] / aid

    def exists(self, artifact_id: str) -> bool:
        try:
            path = self.object_path(artifact_id)
        except InvalidId:
            return False
        return path.is_file()

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[ArtifactId]:
        """A listing of the one shard directory the prefix names (`<root>/<prefix[:2]>`)."""
        if limit <= 0 or not _is_hex_prefix(prefix):
            return []
        try:
            if len(prefix) >= 2:
                shards = [self.root / prefix[:2]]
            else:
                shards = sorted(
                    d for d in self.root.iterdir() if d.name.startswith(prefix) and d.is_dir()
                )
            found: list[str] = []
            for shard in shards:
                try:
                    names = os.listdir(shard)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                found.extend(n for n in names if n.startswith(prefix) and _is_artifact_name(n))
        except FileNotFoundError:
            return []  # no store here yet (read-only): nothing stored
        except OSError:
            raise StorageError(
                "artifact_read_failed", f"cannot list the artifact store {self.url}"
            ) from None
        return [ArtifactId(n) for n in sorted(found)[:limit]]

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        if self.read_only:
            raise StorageError(
                "store_read_only",
                f"the artifact store {self.url} was opened read-only; cannot write {artifact_id}",
                details={"artifact_id": artifact_id},
            )
        path = self.object_path(artifact_id)
        if path.exists():
            self._verify_existing(path, artifact_id, data)
            return artifact_id
        shard = path.parent
        try:
            self._ensure_shard(shard)
            fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=shard)
        except OSError:
            raise self._write_failed(artifact_id) from None
        tmp = Path(tmp_name)
        try:
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fchmod(handle.fileno(), _OBJECT_MODE)
                    os.fsync(handle.fileno())
                created = self._create_from(tmp, path)
                if created:
                    _fsync_dir(shard)
            except OSError:
                raise self._write_failed(artifact_id) from None
            if not created:
                self._verify_existing(path, artifact_id, data)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
        return artifact_id

    def _ensure_shard(self, shard: Path) -> None:
        try:
            shard.mkdir()
        except FileExistsError:
            return
        _fsync_dir(self.root)  # make the new shard directory itself durable

    @staticmethod
    def _create_from(tmp: Path, final: Path) -> bool:
        """Give `tmp` the name `final` without ever replacing an object; False if one exists."""
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
        # No hard links here. Rename is atomic but would replace: only rename onto a free
        # name. Two writers passing the check together both hold the same bytes (the name
        # is their hash), and each verifies the survivor afterwards.
        if final.exists():
            return False
        os.rename(tmp, final)
        return True

    def _verify_existing(self, path: Path, artifact_id: ArtifactId, data: bytes) -> None:
        try:
            existing = path.read_bytes()
        except OSError:
            raise StorageError(
                "artifact_read_failed",
                f"cannot read existing artifact {artifact_id}",
                details={"artifact_id": artifact_id},
            ) from None
        if existing != data:
            raise Corruption(
                "artifact_content_address_mismatch",
                f"stored artifact {artifact_id} differs from its content",
                details={"artifact_id": artifact_id},
            )

    @staticmethod
    def _write_failed(artifact_id: str) -> StorageError:
        return StorageError(
            "artifact_write_failed",
            f"cannot write artifact {artifact_id}",
            details={"artifact_id": artifact_id},
        )

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        path = self.object_path(artifact_id)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(
                f"artifact {artifact_id} not found",
                code="artifact_not_found",
                details={"artifact_id": artifact_id},
            ) from None
        except OSError:
            raise StorageError(
                "artifact_read_failed",
                f"cannot read artifact {artifact_id}",
                details={"artifact_id": artifact_id},
            ) from None
