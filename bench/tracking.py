"""What MLflow tracking costs a run: `trainkit.train` with and without `logging.mlflow`, side by side.

    python bench/tracking.py                          # synthetic images, cnn, 400 steps, log_every 10, 5 rounds
    python bench/tracking.py --log-every 1 --log-checkpoints all

Both contenders are the same run (same config, seed, data) through the public API, start to
return: build, training, evaluation and checkpoints, plus, for the tracked one, the MLflow
run (params, a metric record every --log-every steps, config.yaml and best.pt) in a SQLite
store. The tracker's calls run in a background thread, so what this measures is what that
thread takes from the training loop (the GIL, the disk), not the calls themselves. They
take turns (A B, B A, ...) after an untimed round that also imports mlflow; the verdict is
the median over rounds of untracked time / tracked time. Target: >= 0.97.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from _common import machine_line, median, print_table

TARGET = 0.97


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run (one epoch)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--log-every", type=int, default=10, help="steps between metric records (each goes to MLflow)")
    p.add_argument("--log-checkpoints", default="best", choices=["best", "all", "none"])
    p.add_argument("--every-n-steps", type=int, default=100, help="checkpoint.every_n_steps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def config(args: argparse.Namespace, folder: Path, name: str, tracked: bool) -> dict:
    return {
        "name": name,
        "seed": 0,
        "model": {"name": "cnn"},
        "data": {
            "name": "synthetic_images",
            "n_train": args.steps * args.batch_size,
            "n_test": 1000,
            "size": 28,
            "channels": 1,
            "num_classes": 10,
            "batch_size": args.batch_size,
        },
        "optimizer": {"name": "adam", "lr": 0.001},
        "trainer": {"epochs": 1, "log_every": args.log_every, "device": args.device},
        "checkpoint": {"dir": str(folder / "ckpt"), "every_n_steps": args.every_n_steps},
        "logging": {
            "mlflow": {
                "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
                "experiment": "bench",
                "log_checkpoints": args.log_checkpoints,
            }
            if tracked
            else None
        },
    }


def timed(args: argparse.Namespace, folder: Path, name: str, tracked: bool) -> float:
    import trainkit

    started = time.perf_counter()
    trainkit.train(config(args, folder, name, tracked), quiet=True)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    import mlflow  # noqa: F401  (configures its loggers on import: quiet them after that)

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its table-creation notes
    with tempfile.TemporaryDirectory(prefix="trainkit-bench-") as tmp:
        folder = Path(tmp)
        timed(args, folder, "warmup-tracked", True)  # imports mlflow, creates the store
        timed(args, folder, "warmup", False)
        rows, ratios = [], []
        for r in range(args.rounds):
            order = [False, True] if r % 2 == 0 else [True, False]
            seconds = {tracked: timed(args, folder, f"r{r}-{tracked}", tracked) for tracked in order}
            ratio = seconds[False] / seconds[True]
            ratios.append(ratio)
            rows.append([f"round {r + 1}", seconds[False], seconds[True], ratio])
    print(machine_line())
    print(
        f"cnn on synthetic 28x28 images, batch {args.batch_size}, {args.steps} steps, log_every {args.log_every}, "
        f"checkpoint every {args.every_n_steps} steps, log_checkpoints {args.log_checkpoints}"
    )
    print_table(["", "untracked s", "MLflow s", "untracked / MLflow"], rows)
    verdict = median(ratios)
    status = "ok" if verdict >= TARGET else "below"
    print(f"median ratio untracked / MLflow: {verdict:.3f} (target >= {TARGET}: {status})")


if __name__ == "__main__":
    main()
