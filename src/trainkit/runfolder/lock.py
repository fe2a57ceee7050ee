"""One process per run folder: an exclusive lock file, held while a process writes the folder.

`train`, `resume` and `train --auto-resume` hold `<run>/run.lock` (an exclusive `flock`)
from before their first write until they return. The kernel drops the lock when its process
dies, however it dies (kill -9 included), so there is never a stale lock to clean up. A
second process gets RunFolderBusyError naming the holder (pid, host, start time), which the
holder writes into the file once it has the lock. Readers (eval, runs, plot) never take it.

Why flock and not a POSIX record lock (lockf): a record lock is dropped when its process
closes *any* descriptor of the file, so a reader in the same process (a notebook listing
runs) would silently release it. flock belongs to the open file; on Linux NFS it is carried
by the server's byte-range locks, so it also holds between machines.

The holder removes the file when it releases the lock; a process that died leaves the file
but no lock. A waiting process may have opened a file that its holder then removed, so a
lock only counts if the path still names the locked file afterwards (the usual lock-file
protocol). The folders created for the lock are removed again if nothing else was written
into them, so a run that fails before its first write leaves no trace.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainkit.errors import CheckpointError, RunFolderBusyError
from trainkit.runfolder.layout import LOCK

log = logging.getLogger("trainkit")

# A reader that tests the lock (`trainkit runs`) holds it shared for a moment: retry that long.
WAIT_SECONDS = 1.0
_POLL = 0.05
# Locks this process holds: (folder, thread) -> how many nested holds (auto-resume holds the
# folder across its decision and then trains or resumes, which hold it again).
_held: dict[tuple[str, int], int] = {}
_guard = threading.Lock()


def _describe(info: dict[str, Any]) -> str:
    parts = []
    if info.get("pid") is not None:
        parts.append(f"pid {info['pid']}")
    if info.get("host"):
        parts.append(f"on {info['host']}")
    if isinstance(info.get("started"), (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])))
    return " ".join(parts) or "details unknown"


def read_holder(run_dir: str | Path) -> dict[str, Any]:
    """What the holder wrote into the lock file ({} when absent or not readable)."""
    try:
        data = json.loads((Path(run_dir) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_locked(run_dir: str | Path) -> bool | None:
    """Whether a process holds the folder's lock now; None when there is no lock file.

    Tests without waiting: a shared lock is taken and dropped at once (a writer that tries
    at that instant retries for WAIT_SECONDS)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None  # a file system without locks
    finally:
        os.close(fd)
    return False


def _busy(run_dir: Path) -> RunFolderBusyError:
    holder = _describe(read_holder(run_dir))
    return RunFolderBusyError(
        f"{run_dir} is in use by another trainkit process ({holder}); only one process may write "
        "a run folder: wait for it to end or stop it (its checkpoint then lets you resume)"
    )


def check_free(run_dir: str | Path) -> None:
    """Fail at once if another process holds the folder (for launchers that start others)."""
    if is_locked(run_dir):
        raise _busy(Path(run_dir))


def _missing_folders(run_dir: Path) -> list[Path]:
    """The folders that making `run_dir` creates, deepest first."""
    missing = []
    folder = run_dir
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _lock_file(path: Path, deadline: float) -> int | None:
    """A descriptor of `path` holding its exclusive lock; None where the file system has no locks."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CheckpointError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise _busy(path.parent) from None
            time.sleep(_POLL)
            continue
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.warning(
                    "%s: this file system offers no file locks; make sure no other process writes this run", path
                )
                return None
            raise CheckpointError(f"cannot lock {path}: {exc.strerror or exc}") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file we opened: lock the new one


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    data = (json.dumps(info) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)  # in place: a rename would put a new, unlocked file at the path
    except OSError:
        pass  # the lock holds without its description


@contextlib.contextmanager
def hold(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's exclusive lock (creating the folder) for the duration of the block.

    Raises RunFolderBusyError (exit 2) when another process holds it. Nested holds of the same
    folder by the same thread are one hold."""
    run_dir = Path(run_dir)
    key = (os.path.abspath(run_dir), threading.get_ident())
    with _guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return

    created = _missing_folders(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create run folder {run_dir}: {exc.strerror or exc}") from None
    path = run_dir / LOCK
    fd = None
    try:
        fd = _lock_file(path, time.monotonic() + WAIT_SECONDS)
        if fd is not None:
            _write_holder(fd)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[key]
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                path.unlink()  # while still locked: nobody can lock the file we remove
            os.close(fd)
        for folder in created:  # only what we made, and only if nothing else went in
            try:
                folder.rmdir()
            except OSError:
                break
