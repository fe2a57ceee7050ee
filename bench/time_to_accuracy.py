"""Time to accuracy: how long `trainkit train` takes, command start to exit, to reach its accuracy.

    python bench/time_to_accuracy.py                          # the fast MNIST and Fashion-MNIST recipes
    python bench/time_to_accuracy.py --config configs/mnist_cnn.yaml --set trainer.epochs=1
    python bench/time_to_accuracy.py --repeat 3

Each recipe runs as `trainkit train CONFIG data.root=ROOT checkpoint.dir=<tmp> --quiet`, a
fresh process, so the wall time includes everything a user waits for: Python and torch
start-up, reading the data, training, evaluation and checkpoints. While it runs, the
script watches <tmp>/<name>/metrics.jsonl and notes when each epoch's record appears, which
gives the wall time (since the command started) at which each test accuracy was reached.
A recipe meets its target if its final test accuracy reaches the target accuracy and the
whole command took at most the target time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import DEFAULT_ROOT, REPO, machine_line, median, print_table, trainkit_command

RECIPES = ["configs/mnist_fast.yaml", "configs/fashion_mnist_fast.yaml"]
# recipe file name -> (test accuracy to reach, seconds allowed from command start to exit)
TARGETS = {
    "mnist_fast.yaml": (0.990, 30.0),
    "fashion_mnist_fast.yaml": (0.925, 120.0),
}
POLL_S = 0.05  # how often metrics.jsonl is checked: the error of each epoch's wall time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="PATH",
        help=f"a recipe to run; repeat for several (default: {' '.join(RECIPES)})",
    )
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="data.root: folder holding MNIST/raw, FashionMNIST/raw")
    p.add_argument("--repeat", type=int, default=1, help="runs per recipe; the median run is reported")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="an extra trainkit override for every run, e.g. trainer.epochs=1 (repeatable)",
    )
    p.add_argument("--device", default=None, help="passed to `trainkit train --device` (default: the recipe's)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for the runs (default: torch's choice); 1 is steadier on a small busy machine",
    )
    p.add_argument(
        "--runner",
        default="auto",
        choices=["auto", "script", "module"],
        help="the console script next to this Python, or `python -m trainkit`",
    )
    args = p.parse_args()
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    args.config = args.config or RECIPES
    missing = [c for c in args.config if locate(c) is None]
    if missing:
        p.error(f"no such config: {', '.join(missing)} (choose recipes with --config PATH)")
    args.root = str(Path(args.root).resolve())  # the runs start in the repo root, maybe not here
    return args


def locate(config: str) -> Path | None:
    """A config path as given (from here) or relative to the repo root, made absolute."""
    return next((p.resolve() for p in (Path(config), REPO / config) if p.is_file()), None)


@dataclass
class Epoch:
    number: int
    accuracy: float
    epoch_time: float  # the loop's own measure: training plus evaluation of this epoch
    wall: float  # seconds from the command's start until its record appeared


@dataclass
class Result:
    config: str
    wall: float  # command start to exit
    epochs: list[Epoch] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.epochs[-1].accuracy if self.epochs else float("nan")

    def reached_at(self, accuracy: float) -> float | None:
        """Wall time of the first epoch at or above `accuracy`."""
        return next((e.wall for e in self.epochs if e.accuracy >= accuracy), None)


class MetricsWatcher:
    """Reads the epoch records of <checkpoint.dir>/<name>/metrics.jsonl as they are written."""

    def __init__(self, checkpoint_dir: Path):
        self.dir, self.path, self.offset, self.epochs = checkpoint_dir, None, 0, []

    def poll(self, now: float) -> None:
        if self.path is None:
            found = list(self.dir.glob("*/metrics.jsonl"))
            if not found:
                return
            self.path = found[0]
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read()
        complete = text[: text.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            record = json.loads(line)
            if record.get("type") == "epoch":
                self.epochs.append(
                    Epoch(
                        record["epoch"],
                        record.get("val_accuracy", float("nan")),
                        record.get("epoch_time", float("nan")),
                        now,
                    )
                )


def run_once(prefix: list[str], config: str, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="trainkit-tta-") as tmp:
        argv = (
            prefix
            + [
                "train",
                str(locate(config)),
                f"data.root={args.root}",
                f"checkpoint.dir={tmp}",
                *args.overrides,
                "--quiet",
            ]
            + (["--device", args.device] if args.device else [])
        )
        watcher = MetricsWatcher(Path(tmp))
        # Output goes to a file, not a pipe: a pipe nobody reads during the run could fill and block it.
        with tempfile.TemporaryFile("w+") as log:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                watcher.poll(time.perf_counter() - start)
                time.sleep(POLL_S)
            wall = time.perf_counter() - start
            watcher.poll(wall)  # records written in the last moments
            if proc.returncode != 0:
                log.seek(0)
                sys.exit(f"error: `{' '.join(argv)}` exited with {proc.returncode}:\n{log.read()[-3000:]}")
    return Result(config, wall, watcher.epochs)


def target_of(config: str) -> tuple[float, float] | None:
    return TARGETS.get(Path(config).name)


def verdict(accuracy: float, wall: float, target: tuple[float, float] | None) -> str:
    if target is None:
        return "no target"
    problems = ([f"accuracy < {target[0]:.1%}"] if not accuracy >= target[0] else []) + (
        [f"slower than {target[1]:.0f} s"] if wall > target[1] else []
    )
    return "met" if not problems else "NOT met (" + ", ".join(problems) + ")"


def report_recipe(config: str, results: list[Result]) -> list[Any]:
    """Print one recipe's runs and epochs; return its row of the summary table."""
    target = target_of(config)
    chosen = sorted(results, key=lambda r: r.wall)[len(results) // 2]  # the median run by wall time
    goal = f"target >= {target[0]:.1%} within {target[1]:.0f} s" if target else "no target"
    print(f"{config} ({goal})")
    if len(results) > 1:
        print_table(
            ["run", "final test accuracy", "wall s"],
            [[i + 1, f"{r.final_accuracy:.2%}", r.wall] for i, r in enumerate(results)],
        )
        print(f"epochs of the median run (run {results.index(chosen) + 1}):")
    print_table(
        ["epoch", "test accuracy", "epoch time s", "wall s since start"],
        [[e.number, f"{e.accuracy:.2%}", e.epoch_time, e.wall] for e in chosen.epochs],
    )
    if chosen.epochs:
        # Where the rest of the wall time went: before the first epoch began (Python, torch,
        # data, model, device set-up) and after the last epoch's record (checkpoint, exit).
        first, last = chosen.epochs[0], chosen.epochs[-1]
        print(
            f"before epoch 1: {first.wall - first.epoch_time:.1f} s; after the last epoch's record: "
            f"{chosen.wall - last.wall:.1f} s; epochs: {sum(e.epoch_time for e in chosen.epochs):.1f} s"
        )
    accuracy, wall = median([r.final_accuracy for r in results]), median([r.wall for r in results])
    reached = chosen.reached_at(target[0]) if target else None
    print()
    return [Path(config).name, f"{accuracy:.2%}", wall, reached, verdict(accuracy, wall, target)]


def main() -> None:
    args = parse_args()
    if args.threads:
        # torch takes its thread count from this; the runs inherit it (and machine_line shows it)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    prefix, runner = trainkit_command(args.runner)
    print(machine_line())
    threads = f"OMP_NUM_THREADS={args.threads}" if args.threads else "torch's default threads"
    print(
        f"runner: {runner}; data.root={args.root}; {threads}; {args.repeat} run(s) per recipe"
        + (f"; overrides {' '.join(args.overrides)}" if args.overrides else "")
    )
    print()
    summary = []
    for config in args.config:
        results = []
        for i in range(args.repeat):
            print(f"  running {config} ({i + 1}/{args.repeat})", file=sys.stderr, flush=True)
            results.append(run_once(prefix, config, args))
        summary.append(report_recipe(config, results))
    print_table(["recipe", "final test accuracy", "wall s", "target reached at s", "target"], summary)


if __name__ == "__main__":
    main()
