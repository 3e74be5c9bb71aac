"""Which process drives an embedded run, and whether it is still alive.

While `mfm run` or `mfm resume` executes a run in its own process, it holds an
exclusive `flock` on `<event store dir>/drivers/<run_id>.json` and writes into
that file who it is (`host`, `pid`, start time). The kernel drops the lock when
the process ends, however it ends (Ctrl-C, SIGKILL, a crash), so a reader tells:

* `live` — the lock is held: a process is driving the run now;
* `gone` — the file is there but the lock is free: the driver stopped without
  finishing the run, which is *interrupted* and waits for `mfm resume`;
* `unknown` — the lock is free but the record names another host, whose
  processes this one cannot see (the store is shared over the network).

A driver removes its file once the run has finished. A run without a file (one
driven through the Python API, or on a cluster) is shown as its phase says.
Only SQLite event stores have a directory to keep these files in.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from mfm_dist.stores.base import EventStore

DRIVERS_DIR = "drivers"
LOCK_ATTEMPTS = 5  # a reader probing the lock holds it for microseconds: retry briefly
LOCK_RETRY_S = 0.02


class Liveness(str, Enum):
    LIVE = "live"
    GONE = "gone"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Driver:
    """The process that drives (or last drove) a run."""

    host: str
    pid: int
    since_ms: int

    @property
    def where(self) -> str:
        return f"{self.host}:{self.pid}"

    @classmethod
    def me(cls) -> Driver:
        return cls(host=socket.gethostname(), pid=os.getpid(), since_ms=int(time.time() * 1000))

    @classmethod
    def parse(cls, data: bytes) -> Driver | None:
        try:
            raw = json.loads(data)
            return cls(host=str(raw["host"]), pid=int(raw["pid"]), since_ms=int(raw["since_ms"]))
        except (ValueError, TypeError, KeyError):
            return None  # being written right now, or not ours

    def to_bytes(self) -> bytes:
        body = {"host": self.host, "pid": self.pid, "since_ms": self.since_ms}
        return json.dumps(body, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class DriverStatus:
    """A run's driver record (None if unreadable) and whether it is alive."""

    driver: Driver | None
    liveness: Liveness

    @property
    def interrupted(self) -> bool:
        return self.liveness == Liveness.GONE

    def to_json(self) -> dict[str, Any]:
        d = self.driver
        return {
            "host": d.host if d else None,
            "pid": d.pid if d else None,
            "since_ms": d.since_ms if d else None,
            "liveness": self.liveness.value,
        }


class DrivenElsewhere(Exception):
    """Another live process holds the run's driver lock."""

    def __init__(self, driver: Driver | None) -> None:
        super().__init__("run is driven by another process")
        self.driver = driver


def drivers_dir(events: EventStore) -> Path | None:
    """Where an event store keeps driver records (None: it has no local directory)."""
    from mfm_dist.stores.sqlite import SqliteEventStore

    if isinstance(events, SqliteEventStore):
        return events.path.parent / DRIVERS_DIR
    return None


def _record_path(events: EventStore, run_id: str) -> Path | None:
    folder = drivers_dir(events)
    return None if folder is None else folder / f"{run_id}.json"


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 4096, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def driver_status(events: EventStore, run_id: str) -> DriverStatus | None:
    """The driver of `run_id` as recorded next to the store, or None if none is recorded.

    Opens the record read-only (a shared lock needs no write access), so it works on a
    read-only home."""
    path = _record_path(events, run_id)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return DriverStatus(None, Liveness.UNKNOWN)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return DriverStatus(None, Liveness.UNKNOWN)
            held = True
        else:
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        driver = Driver.parse(_read_all(fd))
    finally:
        os.close(fd)
    if held:
        return DriverStatus(driver, Liveness.LIVE)
    if driver is not None and driver.host != socket.gethostname():
        return DriverStatus(driver, Liveness.UNKNOWN)
    return DriverStatus(driver, Liveness.GONE)


class DriverLock:
    """Held by the process driving a run (`acquire`), released when it stops (`release`)."""

    def __init__(self, path: Path, fd: int, driver: Driver) -> None:
        self.path = path
        self.driver = driver
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, events: EventStore, run_id: str) -> DriverLock | None:
        """Take the run's driver lock and record this process in it; None when the store
        keeps no records (or its directory cannot be written — the store will say why when
        the run is written). Raises `DrivenElsewhere` if a live process holds it."""
        path = _record_path(events, run_id)
        if path is None:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                return None
            try:
                cls._lock(fd)
                with contextlib.suppress(FileNotFoundError):
                    if os.fstat(fd).st_ino == os.stat(path).st_ino:
                        break  # locked the file that is in place
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # removed by its finishing driver meanwhile: lock the new one
        driver = Driver.me()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, driver.to_bytes(), 0)
        except OSError:
            pass  # the lock alone already tells live from gone
        return cls(path, fd, driver)

    @staticmethod
    def _lock(fd: int) -> None:
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if attempt + 1 < LOCK_ATTEMPTS:
                    time.sleep(LOCK_RETRY_S)
        raise DrivenElsewhere(Driver.parse(_read_all(fd)))

    def release(self, *, finished: bool) -> None:
        """Stop driving. The record stays when the run is unfinished: with its lock free it
        says the run was interrupted (and by whom)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if finished:
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            os.close(fd)  # drops the lock
