"""Keep freed host memory for reuse, so CPU training does not page-fault on every step.

PyTorch's CPU allocator hands each activation and gradient buffer to malloc. glibc serves
blocks above its mmap threshold (128 KiB at first) with fresh mmap() pages and returns
them with munmap() when freed, so every step touches new pages and the kernel zeroes and
maps them again: on the 2-core machine trainkit is developed on that made the classic
MNIST CNN about a third slower. Raising the mmap threshold to its maximum (32 MiB on
64-bit) and never trimming the heap keeps those blocks in the process for the next step.
Peak memory stays what the step needs; the memory simply is not given back between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's malloc once per process; True if it applied (Linux with glibc only)."""
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
