"""Writing files so that a kill -9, a full disk or a power cut never leaves a half-written one.

Every writer goes through `atomic_write`: a temp file in the same folder (so the rename
cannot cross file systems), flushed and fsynced, then renamed over the target, then the
folder fsynced so the rename itself is durable. Readers therefore see the old file or
the new one, never a mix. No torch here: `trainkit runs` and friends import this cheaply.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from trainkit.errors import CheckpointError


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_failed(path: Path, exc: OSError) -> CheckpointError:
    reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return CheckpointError(f"could not write {path}: {reason}; the files already there are untouched")


def temp_path(path: Path) -> Path:
    """Where `path` is written before the rename (layout.TEMP_GLOB matches it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _publish(path: Path, fill: Callable[[Path], None]) -> None:
    """Have `fill` make a complete temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        fill(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Run `write(file)` on a temp file beside `path`, fsync it, then rename it over `path`."""

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    _publish(path, fill)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_link(source: Path, target: Path) -> None:
    """Make `target` name the same file as `source` (a copy where hard links are not supported)."""

    def fill(tmp: Path) -> None:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    _publish(target, fill)
