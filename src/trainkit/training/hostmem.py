"""Keep freed host memory for reuse, so CPU training does not page-fault on every step.

PyTorch's CPU allocator hands each activation and gradient buffer to malloc. glibc serves
blocks above its mmap threshold (128 KiB at first) with fresh mmap() pages and returns
them with munmap() when freed, so every step touches new pages and the kernel zeroes and
maps them again: on the 2-core machine trainkit is developed on that made the classic
MNIST CNN about a third slower. Raising the mmap threshold to its maximum (32 MiB on
64-bit) and never trimming the heap keeps those blocks in the process for the next step.
Peak memory stays what the step needs; the memory simply is not given back between steps.

This changes the whole process, so it is explicit: `trainer.host_memory: keep | default`;
unset, it is on for the `trainkit` command (which owns its process; the CLI calls
`set_default("keep")`) and off for the Python API, where the process is the user's
notebook or program. When it is on, the run's start line says so (`note()`). The standard way to get the same
without trainkit is the environment:
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
_done = False
_default_policy = "default"


def set_default(policy: str) -> None:
    """What an unset trainer.host_memory means in this process ("keep" or "default")."""
    global _default_policy
    _default_policy = policy


def apply(policy: str | None) -> bool:
    """Keep freed memory if `policy` (or the process default when None) says "keep"."""
    if (policy or _default_policy) != "keep":
        return False
    return keep_freed_memory()


def note() -> str | None:
    """What a run's start line says about it, once it is on in this process (None if off)."""
    if not _done:
        return None
    return "host memory: freed blocks kept for reuse (trainer.host_memory=default leaves malloc as it is)"


def keep_freed_memory() -> bool:
    """Tune glibc's malloc once per process (a second call is a no-op); True if it applied
    (Linux with glibc only)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _done
