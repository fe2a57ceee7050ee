"""SIGINT / SIGTERM / SIGUSR1 during training: finish the step, checkpoint, stop.

The handler only records the signal; the loop looks at the flag between steps (a plain
attribute read, no device sync), so the model is never left half-updated. SIGUSR1 is the
preemption notice of batch schedulers (SLURM's `--signal=USR1@90`): the same stop, but the
run ends with exit code 124 so that the job script knows to requeue it (errors.TrainingPreempted).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType


class StopRequest:
    """Context manager that turns the first SIGINT/SIGTERM/SIGUSR1 into a flag."""

    # SIGUSR1 does not exist on Windows
    SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            _say(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint...")
        else:  # a second Ctrl-C while saving: the save is atomic, so just say we are on it
            _say("still saving the checkpoint; it will stop right after")

    @property
    def requested(self) -> bool:
        return self.signum is not None


def _say(text: str) -> None:
    # Under torchrun every rank gets the signal; rank 0 speaks for them. The terminal may be
    # gone (the signal came because the launcher died): saving the checkpoint matters more.
    if os.environ.get("RANK", "0") != "0":
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
