"""How long the `trainkit` command takes to answer, against `python -c "import torch"`.

    python bench/startup.py                 # 10 timed runs of each command after 1 warm-up
    python bench/startup.py --runs 20 --runner module

Each command runs as a fresh subprocess, as a user would type it; the table gives the
median wall time and its ratio to importing torch. Target: `trainkit --help` under 0.3 s,
which is only possible if it does not import torch, so the script also checks, with
`python -X importtime`, which commands import torch at all.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from _common import REPO, median, print_table, trainkit_command

HELP_TARGET_S = 0.3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--runs", type=int, default=10, help="timed runs per command (after one warm-up run)")
    p.add_argument(
        "--runner",
        default="auto",
        choices=["auto", "script", "module"],
        help="the console script next to this Python, or `python -m trainkit`; auto: the script if present",
    )
    p.add_argument("--config", default="configs/mnist_cnn.yaml", help="the config `trainkit validate` reads")
    p.add_argument("--slowest", type=int, default=5, help="show this many slowest imports of `trainkit --help`")
    args = p.parse_args()
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def wall_time(argv: list[str]) -> float:
    """Seconds from starting the process to its exit; a failing command stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(argv, check=False, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: `{' '.join(argv)}` exited with {done.returncode}:\n{done.stderr.strip()}")
    return seconds


def median_time(argv: list[str], runs: int) -> float:
    wall_time(argv)  # warm-up: fills the OS file cache and writes .pyc files
    return median([wall_time(argv) for _ in range(runs)])


def imported_modules(args: list[str]) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) for each import of `python -X importtime -m trainkit ARGS`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainkit", *args],
        check=False,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    modules = []
    for line in done.stderr.splitlines():  # "import time:  self [us] | cumulative | imported package"
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|", 2)
            if cumulative.strip().isdigit():
                modules.append((int(cumulative), name.rstrip()))
    return modules


def imports_torch(modules: list[tuple[int, str]]) -> bool:
    return any(name.strip() == "torch" or name.strip().startswith("torch.") for _, name in modules)


def main() -> None:
    args = parse_args()
    prefix, runner = trainkit_command(args.runner)
    commands = {  # label -> trainkit arguments
        "trainkit --help": ["--help"],
        "trainkit --version": ["--version"],
        "trainkit ls": ["ls"],
        f"trainkit validate {args.config}": ["validate", args.config],
    }
    print(f"runner: {runner}; {args.runs} timed runs per command after 1 warm-up; cwd {REPO}")
    print()

    reference = median_time([sys.executable, "-c", "import torch"], args.runs)
    bare = median_time([sys.executable, "-c", "pass"], args.runs)
    rows = [["python -c pass", bare, bare / reference, "no"], ['python -c "import torch"', reference, 1.0, "yes"]]
    help_time = None
    for label, trainkit_args in commands.items():
        seconds = median_time(prefix + trainkit_args, args.runs)
        help_time = seconds if trainkit_args == ["--help"] else help_time
        torch_loaded = "yes" if imports_torch(imported_modules(trainkit_args)) else "no"
        rows.append([label, seconds, seconds / reference, torch_loaded])
    print_table(["command", "median s", "x import torch", "imports torch"], rows)

    print()
    verdict = "met" if help_time < HELP_TARGET_S else "NOT met"
    print(f"trainkit --help: {help_time:.3f} s median; target < {HELP_TARGET_S} s: {verdict}")
    if args.slowest:
        # Top-level imports only (no leading spaces): what a lazier import would save.
        top = sorted((m for m in imported_modules(["--help"]) if not m[1].startswith("  ")), reverse=True)
        print(
            "slowest top-level imports of `trainkit --help` (cumulative): "
            + ", ".join(f"{name.strip()} {us / 1000:.0f} ms" for us, name in top[: args.slowest])
        )


if __name__ == "__main__":
    main()
