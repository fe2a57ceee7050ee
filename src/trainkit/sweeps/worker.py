"""One trial's process: `python -m trainkit.sweeps.worker`, started by the sweep for each attempt.

It trains (or resumes) one ordinary run folder through the API, with a sink that sends each
epoch's objective to the sweep process and asks whether to stop (Optuna's pruner lives
there). A trial in its own process starts from a clean slate (threads, seeds, CUDA state) and
can be killed alone.

Talk: the job arrives as the first line on stdin; after each epoch record the worker writes
`{"event": "epoch", ...}` to the file descriptor named by TRAINKIT_SWEEP_FD and reads the
answer `{"prune": bool}` from stdin; it ends with `{"event": "end", ...}`. When stdin closes
(the sweep process died, however it died) the worker stops as on SIGTERM: a checkpoint at
the next step, then exit, so the trial resumes exactly when the sweep runs again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

from trainkit.errors import (
    ConfigError,
    NonFiniteLossError,
    OutOfMemoryError,
    RunStopped,
    TrainingInterrupted,
    TrainkitError,
    UsageError,
)

FD_ENV = "TRAINKIT_SWEEP_FD"
# A trial's own outcome (its params diverge, do not fit, or make a bad combination): the
# trial fails and the sweep goes on. Any other error is the machine's or the set-up's, the
# same for every trial: the sweep stops and says it.
TRIAL_OUTCOMES = (NonFiniteLossError, OutOfMemoryError, ConfigError)


class TrialPruned(RunStopped):
    """Optuna's pruner stopped the trial: the run ends with a checkpoint and status "pruned"."""

    status = "pruned"


class ObjectiveMissing(UsageError):
    """The objective's metric is not in the epoch record (e.g. val_accuracy of a regression)."""


class _Channel:
    def __init__(self, out: IO[str], stdin: IO[str]):
        self.out = out
        self.answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._listen, args=(stdin,), daemon=True).start()

    def _listen(self, stdin: IO[str]) -> None:
        for line in stdin:
            self.answers.put(json.loads(line))
        # the sweep process is gone: stop as on SIGTERM (checkpoint at the next step, then exit)
        self.answers.put(None)
        os.kill(os.getpid(), signal.SIGTERM)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()
        except OSError:  # nobody listens any more; the SIGTERM above ends the run
            pass


class PruneSink:
    """Each epoch's objective to the sweep; its pruner's answer back (on rank 0, as every sink)."""

    def __init__(self, channel: _Channel, metric: str):
        self.channel, self.metric = channel, metric

    def start(self, run_dir: Path, config: dict[str, Any], step: int) -> None:
        pass

    def record(self, record: dict[str, Any]) -> None:
        if record.get("type") != "epoch":
            return
        value = record.get(self.metric)
        if not isinstance(value, (int, float)):
            metrics = ", ".join(k for k in record if k.startswith(("val_", "train_")))
            raise ObjectiveMissing(
                f"the objective's metric {self.metric} is not in the epoch record (it has {metrics})"
            )
        self.channel.send({"event": "epoch", "epoch": record["epoch"], "value": float(value)})
        answer = self.channel.answers.get()
        if answer is not None and answer.get("prune"):
            raise TrialPruned(f"pruned after epoch {record['epoch']} ({self.metric} {value:.4g})")

    def checkpoint(self, path: Path, is_best: bool, step: int) -> None:
        pass

    def finish(self, status: str, message: str | None) -> None:
        pass


def _run(job: dict[str, Any], channel: _Channel) -> tuple[str, str | None, str, int]:
    """(status, error, kind, exit code) of training the job's run folder."""
    import torch

    from trainkit import api
    from trainkit.training import hostmem

    torch.set_num_threads(job["threads"])
    print(f"trial process {os.getpid()}: {torch.get_num_threads()} CPU threads", file=sys.stderr, flush=True)
    hostmem.set_default("keep")  # this process is trainkit's own, as under the trainkit command
    sink = PruneSink(channel, job["metric"])
    try:
        if job["resume"]:
            api.resume(job["run_dir"], sinks=[sink], imports=job.get("imports", []))
        else:
            api.train(job["config"], overwrite=job["overwrite"], sinks=[sink])
    except TrialPruned as exc:
        return "pruned", str(exc), "trial", 0
    except TrainingInterrupted as exc:
        return "interrupted", str(exc), "trial", exc.exit_code
    except TRIAL_OUTCOMES as exc:
        return "failed", str(exc).splitlines()[0], "trial", exc.exit_code
    except TrainkitError as exc:
        return "failed", str(exc).splitlines()[0], "setup", exc.exit_code
    except Exception as exc:  # a user's component raising for these params: the trial's own failure
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {exc}".splitlines()[0], "trial", 1
    return "complete", None, "trial", 0


def main() -> None:
    handler = logging.StreamHandler(sys.stderr)  # warnings and notes into the trial's log
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("trainkit").addHandler(handler)
    logging.getLogger("trainkit").setLevel(logging.INFO)
    job = json.loads(sys.stdin.readline())
    out = os.fdopen(int(os.environ[FD_ENV]), "w", encoding="utf-8")
    channel = _Channel(out, sys.stdin)
    status, error, kind, code = _run(job, channel)
    channel.send({"event": "end", "status": status, "error": error, "kind": kind, "exit_code": code})
    with contextlib.suppress(OSError):  # the sweep process may be gone: nobody to tell
        out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the listening thread may still block on stdin


if __name__ == "__main__":
    main()
