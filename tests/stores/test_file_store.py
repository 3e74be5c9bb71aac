"""File artifact store specifics: layout, create-only puts across processes, no temp files."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
import stat
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from mfm_dist.artifacts import ArtifactKind
from mfm_dist.errors import Corruption, StorageError
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.urls import open_artifact_store

PROCESSES = 32
BARRIER_WAIT_S = 120.0  # a safety net against a crashed sibling, not a timing assertion


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_is_root_prefix_id(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "artifacts"
    store = FileArtifactStore(root)
    data = b"layout"
    artifact_id = store.put(ArtifactKind.OUTPUT, data)
    expected = root / artifact_id[:2] / artifact_id
    assert store.object_path(artifact_id) == expected
    assert all_files(root) == [expected]
    assert expected.read_bytes() == data
    assert stat.S_IMODE(expected.stat().st_mode) == 0o444  # immutable once written


def test_url_round_trips_and_reopen_sees_objects(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "a")
    assert store.url == f"file://{(tmp_path / 'a').absolute()}"
    artifact_id = store.put(ArtifactKind.MANIFEST, b"persisted")
    again = open_artifact_store(store.url)
    assert isinstance(again, FileArtifactStore)
    assert again.root == store.root
    assert again.get(artifact_id) == b"persisted"


def _put_from_process(root: str, data: bytes, barrier: Barrier, out: Queue[str]) -> None:
    store = FileArtifactStore(Path(root))
    barrier.wait(BARRIER_WAIT_S)
    out.put(store.put(ArtifactKind.OUTPUT, data))


def test_concurrent_process_puts_all_succeed(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    data = os.urandom(256 * 1024)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    out: Queue[str] = ctx.Queue()
    procs = [
        ctx.Process(target=_put_from_process, args=(str(root), data, barrier, out))
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    ids = [out.get(timeout=BARRIER_WAIT_S) for _ in procs]
    for proc in procs:
        proc.join()
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    expected = hashlib.sha256(data).hexdigest()
    assert ids == [expected] * PROCESSES
    store = FileArtifactStore(root)
    assert store.get(expected) == data
    assert all_files(root) == [store.object_path(expected)]  # no temp files left behind


def test_existing_object_with_other_bytes_is_corruption(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path)
    data = b"original"
    artifact_id = store.put(ArtifactKind.OUTPUT, data)
    path = store.object_path(artifact_id)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(Corruption) as caught:
        store.put(ArtifactKind.OUTPUT, data)
    assert caught.value.code == "artifact_content_address_mismatch"
    assert path.read_bytes() == b"tampered"  # reported, never overwritten
    assert all_files(tmp_path) == [path]


def test_race_loser_verifies_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileArtifactStore(tmp_path)
    data = b"contended"
    artifact_id = hashlib.sha256(data).hexdigest()
    path = store.object_path(artifact_id)
    real_link = os.link

    def winner_first(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # Another writer creates the object between our existence check and our link.
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(winner_bytes)
        real_link(src, dst)

    winner_bytes = data
    monkeypatch.setattr(os, "link", winner_first)
    assert store.put(ArtifactKind.OUTPUT, data) == artifact_id
    assert all_files(tmp_path) == [path]

    path.unlink()
    winner_bytes = b"a different winner"
    with pytest.raises(Corruption) as caught:
        store.put(ArtifactKind.OUTPUT, data)
    assert caught.value.code == "artifact_content_address_mismatch"
    assert all_files(tmp_path) == [path]


def test_without_hard_links_rename_never_overwrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    store = FileArtifactStore(tmp_path)
    artifact_id = store.put(ArtifactKind.OUTPUT, b"renamed")
    assert store.get(artifact_id) == b"renamed"
    assert store.put(ArtifactKind.OUTPUT, b"renamed") == artifact_id
    path = store.object_path(artifact_id)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(Corruption):
        store.put(ArtifactKind.OUTPUT, b"renamed")
    assert path.read_bytes() == b"tampered"
    assert all_files(tmp_path) == [path]


def test_write_failure_is_a_storage_error_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError(errno.ENOSPC, "no space left on device")

    monkeypatch.setattr(os, "link", disk_full)
    store = FileArtifactStore(tmp_path)
    with pytest.raises(StorageError) as caught:
        store.put(ArtifactKind.OUTPUT, b"lost")
    assert caught.value.code == "artifact_write_failed"
    assert all_files(tmp_path) == []
    assert not store.exists(hashlib.sha256(b"lost").hexdigest())


def test_exists_rejects_ids_that_are_not_content_addresses(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path / "root")
    (tmp_path / "outside").write_bytes(b"x")
    assert not store.exists("../outside")
    assert not store.exists("A" * 64)
    assert not store.exists("")
