"""Opening the files a user names (configs, checkpoints, images) without hanging on odd ones.

`open()` of a named pipe blocks until a writer comes, `/dev/zero` never ends, a symlink
loop and a folder fail in ways of their own. So a path's type is checked first
(`special_kind`), the file is opened with O_NONBLOCK (a pipe swapped in after the check
still cannot block) and checked again on the open descriptor, and text is read with a
size cap, so a file that grows while it is read still ends. No torch here: the config
reader uses this too.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotAFile(OSError):
    """The path exists but is no regular file; `kind` says what it is ("a folder", ...)."""

    def __init__(self, path: str | os.PathLike, kind: str):
        super().__init__(errno.EINVAL, f"is {kind}, not a file", str(path))
        self.kind = kind


class TooLarge(OSError):
    def __init__(self, path: str | os.PathLike, limit: int):
        super().__init__(errno.EFBIG, f"is larger than {limit // 1024} KiB", str(path))
        self.limit = limit


def _kind(mode: int) -> str | None:
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def special_kind(path: str | os.PathLike) -> str | None:
    """None for a regular file (or a link to one); else what the path is. Raises OSError
    for a path that cannot be looked at (missing: FileNotFoundError; a symlink loop: ELOOP)."""
    return _kind(os.stat(path).st_mode)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """A regular file opened for binary reading; NotAFile for anything else (never blocks)."""
    kind = special_kind(path)  # before open(): opening a FIFO to read blocks until a writer comes
    if kind is not None:
        raise NotAFile(path, kind)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        kind = _kind(os.fstat(fd).st_mode)  # the same file we checked, not one swapped in since
        if kind is not None:
            raise NotAFile(path, kind)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; TooLarge beyond (read stops at
    limit + 1 bytes, so a file that keeps growing cannot keep us reading)."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(path, limit)
    return data


def describe(exc: OSError) -> str:
    """A short reason for an OSError of the functions above ('is a folder, not a file',
    'symlink loop', 'permission denied')."""
    if isinstance(exc, (NotAFile, TooLarge)):
        return exc.strerror or str(exc)
    if exc.errno == errno.ELOOP:
        return "symlink loop (a link that points back at itself)"
    return exc.strerror.lower() if exc.strerror else str(exc)
