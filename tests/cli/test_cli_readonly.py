"""Read commands open the embedded stores read-only: they audit an archived, read-only home,
create nothing where they run, and say which store they looked in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mfm_dist.artifacts import ArtifactKind
from mfm_dist.cli.main import cli
from mfm_dist.errors import StorageError
from mfm_dist.events import EventEnvelope
from mfm_dist.ids import RunId
from mfm_dist.reports import RunReport
from mfm_dist.results import RunResult
from mfm_dist.stores.files import FileArtifactStore
from mfm_dist.stores.sqlite import SqliteEventStore
from support.servers import RedisServer

UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"


def mfm(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply: tests run as root, for whom
    `chmod a-w` stops nothing, so drop the capabilities that override them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def cli_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFM_")}
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "mfm_dist.cli.main", *args],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `root` with its size, mtime and mode: equal ⇔ untouched."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture
def read_only_dirs() -> Iterator[Callable[[Path], None]]:
    """Make directory trees read-only; writable again at teardown (so they can be removed)."""
    made: list[Path] = []

    def make(root: Path) -> None:
        made.append(root)
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)

    try:
        yield make
    finally:
        for root in made:
            for path in [root, *root.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)


def test_read_commands_audit_a_read_only_home(
    tmp_path: Path, read_only_dirs: Callable[[Path], None]
) -> None:
    home = tmp_path / "archive"
    done = mfm("--home", str(home), "run", "fanout_demo", "--input", '{"items": 3}', "--json")
    assert done.exit_code == 0, done.output
    result = RunResult.model_validate_json(done.stdout)
    rid, final = str(result.run_id), str(result.final_snapshot_id)
    read_only_dirs(home)
    before = tree_state(home)
    probe = subprocess.run(
        [*unprivileged(), "sh", "-c", f"touch {home}/probe"], capture_output=True, check=False
    )
    assert probe.returncode != 0, "the home must really be read-only for this test"

    h = ["--home", str(home)]
    runs = cli_process(*h, "runs", "--json", cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr.decode()
    assert [row["run_id"] for row in json.loads(runs.stdout)] == [rid]

    status = cli_process(*h, "status", rid, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr.decode()
    assert RunReport.model_validate_json(status.stdout).phase.value == "Completed"

    verify = cli_process(*h, "verify", rid, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr.decode()
    assert verify.stdout.decode().startswith(f"verified: run {rid}")

    context = cli_process(*h, "context", rid, cwd=tmp_path)
    assert context.returncode == 0, context.stderr.decode()
    assert json.loads(context.stdout)["input"] == {"items": 3}

    events = cli_process(*h, "events", rid, "--json", cwd=tmp_path)
    assert events.returncode == 0, events.stderr.decode()
    assert EventEnvelope.from_bytes(events.stdout.splitlines()[0]).seq == 1

    artifact = cli_process(*h, "artifact", final, cwd=tmp_path)
    assert artifact.returncode == 0, artifact.stderr.decode()
    assert json.loads(artifact.stdout) == json.loads(context.stdout)

    replay = cli_process(*h, "replay", rid, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr.decode()

    unknown = cli_process(*h, "status", UNKNOWN_RUN, cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.decode() == (
        f"error[run_not_found]: run {UNKNOWN_RUN} not found in "
        f"sqlite://{home.absolute()}/events.sqlite3\n"
    )
    assert tree_state(home) == before  # nothing written, created or re-moded


def test_read_commands_create_no_store_where_they_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "somewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    listing = mfm("runs")
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.strip() == (
        f"no runs in sqlite://{empty}/.mfm/events.sqlite3 (no event store there yet)"
    )
    assert mfm("runs", "--json").stdout == "[]\n"
    for args in (["status", UNKNOWN_RUN], ["events", UNKNOWN_RUN], ["verify", UNKNOWN_RUN],
                 ["context", UNKNOWN_RUN], ["replay", UNKNOWN_RUN]):  # fmt: skip
        result = mfm(*args)
        assert result.exit_code == 2, (args, result.output)
        assert error_line(result) == (
            f"error[run_not_found]: run {UNKNOWN_RUN} not found in "
            f"sqlite://{empty}/.mfm/events.sqlite3"
        ), args
    missing = mfm("artifact", "0" * 64)
    assert missing.exit_code == 2
    assert error_line(missing).startswith("error[artifact_not_found]: ")
    assert mfm("graph", "etl_demo").exit_code == 0
    assert list(empty.iterdir()) == []  # no ./.mfm, nothing at all


def test_run_not_found_names_the_redacted_remote_store(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_factory(requirepass="the-s3cret-word")
    url = f"redis://:the-s3cret-word@127.0.0.1:{server.port}/3"
    result = mfm("--home", str(tmp_path / "home"), "--events-url", url, "status", UNKNOWN_RUN)
    assert result.exit_code == 2
    assert error_line(result) == (
        f"error[run_not_found]: run {UNKNOWN_RUN} not found in "
        f"redis://***@127.0.0.1:{server.port}/3"
    )
    assert "s3cret" not in result.output + result.stderr


def _copy_home(home: Path, target: Path, suffixes: tuple[str, ...]) -> None:
    target.mkdir()
    shutil.copytree(home / "artifacts", target / "artifacts")
    for suffix in suffixes:
        shutil.copy(home / f"events.sqlite3{suffix}", target / f"events.sqlite3{suffix}")
    assert (target / "events.sqlite3-wal").stat().st_size > 0


def test_a_read_only_copy_with_pending_wal_is_read_exactly_or_refused(
    tmp_path: Path, read_only_dirs: Callable[[Path], None]
) -> None:
    """A read-only directory gets no -shm index; `immutable` would then ignore the -wal and
    show a stale (here: empty) history — so that case is refused, never shown."""
    home = tmp_path / "live"
    # A connection held open across the run: the last close (which checkpoints the WAL into
    # the database) has not happened when the files are copied, as with a live writer.
    writer = SqliteEventStore(home / "events.sqlite3")
    try:
        done = mfm("--home", str(home), "run", "etl_demo", "--json")
        assert done.exit_code == 0, done.output
        rid = RunResult.model_validate_json(done.stdout).run_id
        with_index, without_index = tmp_path / "with-shm", tmp_path / "wal-only"
        _copy_home(home, with_index, ("", "-wal", "-shm"))
        _copy_home(home, without_index, ("", "-wal"))
    finally:
        writer.close()
    read_only_dirs(with_index)
    read_only_dirs(without_index)

    exact = cli_process("--home", str(with_index), "runs", "--json", cwd=tmp_path)
    assert exact.returncode == 0, exact.stderr.decode()
    assert [row["run_id"] for row in json.loads(exact.stdout)] == [rid]

    refused = cli_process("--home", str(without_index), "runs", "--json", cwd=tmp_path)
    assert refused.returncode == 3 and refused.stdout == b""
    assert refused.stderr.decode().startswith("error[sqlite_open_failed]: ")
    assert "write-ahead log holds changes" in refused.stderr.decode()


def test_read_only_stores_refuse_writes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert mfm("--home", str(home), "run", "etl_demo").exit_code == 0
    events = SqliteEventStore(home / "events.sqlite3", read_only=True)
    artifacts = FileArtifactStore(home / "artifacts", read_only=True)
    try:
        rid = events.list_runs()[0].run_id
        with pytest.raises(StorageError) as refused:
            events.append_next(RunId(rid), [])
        assert refused.value.code == "store_read_only"
        with pytest.raises(StorageError) as refused_put:
            artifacts.put(ArtifactKind.MANIFEST, b"{}")
        assert refused_put.value.code == "store_read_only"
    finally:
        events.close()
        artifacts.close()
    nowhere = tmp_path / "nowhere"
    empty = SqliteEventStore(nowhere / "events.sqlite3", read_only=True)
    try:
        assert empty.list_runs() == [] and empty.missing
        assert not nowhere.exists()
        # A store created meanwhile (a run starting) is read once it is there.
        assert mfm("--home", str(nowhere), "run", "etl_demo").exit_code == 0
        assert [r.op_id for r in empty.list_runs()] == ["etl_demo"] and not empty.missing
    finally:
        empty.close()
