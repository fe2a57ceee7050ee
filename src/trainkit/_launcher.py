"""`trainkit train|resume --nproc N`: torch.distributed's launcher, with trainkit's exit codes.

The CLI validates the command first, then execs `python -m trainkit._launcher ARGS`, where
ARGS are torchrun's own. This runs torchrun's launcher (`torch.distributed.run.run`) as
torchrun does; the difference is the end. torchrun exits 1 after any worker failure and adds
a traceback of its own (`ChildFailedError`) below the workers' messages; here the workers
have already said what went wrong in one line, so the launcher only exits with the first
failed worker's code: 2 for a usage error, 143 after SIGTERM, 1 for a runtime failure.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's agent logs each step of starting and stopping workers, and each failure;
    # the workers have said what went wrong, so the agent stays quiet
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        code = failure.exitcode
        return code if code > 0 else 128 - code if code < 0 else 1  # killed by signal N: 128 + N, as shells say
    except SignalException as exc:  # the launcher itself got SIGTERM/SIGINT and stopped the workers
        return 128 + int(exc.sigval)
    except Exception as exc:  # the launcher's own failure (rendezvous, ports): one line, as for any error
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: torch.distributed's launcher failed: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
