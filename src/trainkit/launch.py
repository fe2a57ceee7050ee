"""torchrun with trainkit's exit codes and SIGUSR1: `python -m trainkit.launch [torchrun's arguments]`.

`trainkit train|resume --nproc N` validates the command in its own process, then execs this
module, which runs torch.distributed's launcher (`torch.distributed.run.run`) as torchrun does,
with every argument the same. Use it in place of `torchrun` (several nodes too). The
differences are for batch schedulers and for reading what went wrong:

- SIGUSR1 (SLURM's preemption notice, `--signal=USR1@90`) is forwarded to every worker, the way
  torchrun forwards SIGTERM: each finishes its step, they save one checkpoint together and stop.
  torchrun alone dies of SIGUSR1 (its default action) and leaves the workers running.
- The exit code is the workers' own: 124 when they stopped for SIGUSR1 (the job script
  requeues), 130/143 for SIGINT/SIGTERM, 2 for a usage error, 1 for a runtime failure. torchrun
  exits 1 after any failure and adds a traceback of its own (`ChildFailedError`) below the
  workers' messages; here the workers have already said what went wrong in one line.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any


def _signal_code(sigval: int) -> int:
    return 124 if sigval == signal.SIGUSR1 else 128 + sigval


def _failure_code(failures: dict[int, Any], first: Any) -> int:
    """124 if any rank stopped for SIGUSR1 (they all saved the common checkpoint), else the
    first failed rank's code; killed by signal N: 128 + N, as shells say."""
    if any(failure.exitcode == 124 for failure in failures.values()):
        return 124
    code = int(first.exitcode)
    return code if code > 0 else 128 - code if code < 0 else 1


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    def forward(signum: int, frame: object) -> None:
        # what torchrun does for SIGTERM: its agent catches this, sends the same signal to every
        # worker and waits for them. Set before the agent starts, which only sets its own list.
        raise SignalException(f"got signal {signum}", sigval=signal.Signals(signum))

    # torchrun's agent logs each step of starting and stopping workers, and each failure;
    # the workers have said what went wrong, so the agent stays quiet
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGUSR1, forward)
    try:
        run(parse_args(argv if argv is not None else sys.argv[1:]))
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        return _failure_code(exc.failures, first)
    except SignalException as exc:  # the launcher itself got a signal and stopped the workers
        return _signal_code(int(exc.sigval))
    except Exception as exc:  # the launcher's own failure (rendezvous, ports): one line, as for any error
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: torch.distributed's launcher failed: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
