"""A worker under torchrun stops when its launcher dies, as if the launcher had sent SIGTERM.

torch.distributed's launcher starts each worker in a session of its own, so when the
launcher is killed (kill -9, a crashed job step) its workers are re-parented and would go
on training and writing the run folder on their own, racing a `trainkit resume` of the same
folder. Instead each worker asks for SIGTERM when its parent dies: Linux's
prctl(PR_SET_PDEATHSIG) through ctypes, elsewhere a thread that watches the parent pid.
SIGTERM then does what it always does in the loop (signals.py): every rank agrees to stop
at the same step, a checkpoint is written, and the run resumes exactly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_watching = False


def _prctl_deathsig(signum: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll(parent: int, signum: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os.kill(os.getpid(), signum)


def stop_when_parent_dies(signum: int = signal.SIGTERM, interval: float = 1.0) -> None:
    """Have `signum` sent to this process when its parent (the launcher) exits. Once per process."""
    global _watching
    if _watching:
        return
    _watching = True
    parent = os.getppid()
    if not (sys.platform.startswith("linux") and _prctl_deathsig(signum)):
        watch = threading.Thread(target=_poll, args=(parent, signum, interval), name="trainkit-parent", daemon=True)
        watch.start()
    if os.getppid() != parent:  # it died before the request was in place
        os.kill(os.getpid(), signum)
