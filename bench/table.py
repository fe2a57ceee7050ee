"""A CSV table: `trainkit train` against a hand-written pandas -> tensor -> loop script.

    python bench/table.py                          # 100,000 rows x 50 columns, 3 alternated rounds
    python bench/table.py --rows 20000 --rounds 1  # a quick check
    python bench/table.py --write data/table.csv --rows 10000   # only write a table (the README example)

The table is written by this script from a known rule (below), once, into a temporary
folder. Both contenders then do the same job as fresh processes, timed from start to exit:
read the CSV, one-hot the text column, split 80/20 (seeded; trainkit's split is also
stratified), standardise the numbers with the training rows' statistics, train the same MLP
(50 -> 256 -> 128 -> 2, ReLU) with Adam (lr 1e-3) for one epoch of shuffled batches of 64,
measure the test accuracy and save the weights. They take turns (A B, B A, ...) and the
verdict is the median over rounds of the ratio trainkit / hand-written; target <= 1.0.

The rule: 48 numeric columns f00..f47 (normal, each with its own scale and offset) and a
text column `group` (A..E); `label` is "yes" where w . z + b[group] > 0, with z the
standardised numbers and w, b drawn from a seeded generator, else "no".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine_line, median, print_table, trainkit_command

TARGET = 1.0  # trainkit / hand-written wall time, median over rounds
GROUPS = ["A", "B", "C", "D", "E"]

HAND_WRITTEN = r"""
import json, sys
import numpy as np, pandas as pd, torch
import torch.nn.functional as F
from torch import nn

path, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
frame = pd.read_csv(path)
labels = frame.pop("label")
inputs = pd.get_dummies(frame, columns=["group"], dtype=np.float64)
classes = sorted(labels.unique())
targets = labels.map({c: i for i, c in enumerate(classes)}).to_numpy()
order = np.random.default_rng(0).permutation(len(frame))
test, train = order[: round(0.2 * len(frame))], order[round(0.2 * len(frame)):]
values = inputs.to_numpy()
numeric = np.array([not c.startswith("group_") for c in inputs.columns])
mean, std = values[train].mean(0), values[train].std(0)
mean[~numeric], std[~numeric] = 0.0, 1.0
std[std == 0] = 1.0
x = torch.from_numpy(((values - mean) / std).astype(np.float32))
y = torch.from_numpy(targets.astype(np.int64))
x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
model = nn.Sequential(
    nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, len(classes))
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
perm = torch.randperm(len(x_train))
losses = torch.zeros(len(range(0, len(perm), 64)))
for b, start in enumerate(range(0, len(perm), 64)):
    idx = perm[start : start + 64]
    loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    losses[b] = loss.detach()
model.eval()
with torch.no_grad():
    correct = sum((model(x_test[i : i + 1000]).argmax(1) == y_test[i : i + 1000]).sum().item()
                  for i in range(0, len(x_test), 1000))
torch.save(model.state_dict(), out)
print(json.dumps({"train_loss": losses.mean().item(), "accuracy": correct / len(x_test)}))
"""

CONFIG = """\
name: table_bench
model: {{name: mlp, hidden: [256, 128]}}
data: {{name: table, path: {path}, target: label, batch_size: 64, eval_batch_size: 1000}}
optimizer: {{name: adam, lr: 0.001}}
trainer: {{epochs: 1, device: cpu, log_every: 50}}
checkpoint: {{dir: {dir}}}
"""


def write_table(path: Path, rows: int, seed: int = 0) -> Path:
    """The rule's table as CSV (pyarrow's writer: fast, and what trainkit[tables] installs)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    scale, offset = rng.uniform(0.5, 20, 48), rng.uniform(-50, 50, 48)
    z = rng.standard_normal((rows, 48))
    group = rng.integers(0, len(GROUPS), rows)
    w, b = rng.standard_normal(48) / np.sqrt(48), rng.standard_normal(len(GROUPS))
    label = np.where(z @ w + b[group] > 0, "yes", "no")
    columns = {f"f{i:02d}": z[:, i] * scale[i] + offset[i] for i in range(48)}
    table = pa.table({**columns, "group": np.array(GROUPS)[group], "label": label})
    path.parent.mkdir(parents=True, exist_ok=True)
    pcsv.write_csv(table, path)
    return path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (each contender once per round)")
    p.add_argument("--write", metavar="CSV", help="only write the table to this file and exit")
    p.add_argument("--runner", default="auto", choices=["auto", "script", "module"], help="how to call trainkit")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both contenders")
    return p.parse_args()


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command[:4])} ... exited {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed, done.stdout


def main() -> None:
    args = parse_args()
    if args.write:
        print(f"wrote {write_table(Path(args.write), args.rows)} ({args.rows} rows x 50 columns)")
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    trainkit, label = trainkit_command(args.runner)
    with tempfile.TemporaryDirectory(prefix="trainkit_table_") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        csv = write_table(folder / "table.csv", args.rows)
        print(
            f"table: {csv.stat().st_size / 1e6:.1f} MB, {args.rows} rows x 50 columns, written in "
            f"{time.perf_counter() - started:.1f} s; trainkit via {label}"
        )
        (folder / "cfg.yaml").write_text(CONFIG.format(path=csv, dir=folder / "runs"))
        (folder / "hand.py").write_text(HAND_WRITTEN)
        commands = {
            "trainkit": [*trainkit, "train", str(folder / "cfg.yaml"), "--overwrite", "--quiet"],
            "hand-written": [sys.executable, str(folder / "hand.py"), str(csv), str(folder / "hand.pt")],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        accuracy: dict[str, float] = {}
        for r in range(args.rounds):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                elapsed, out = _timed(commands[name], env)
                times[name].append(elapsed)
                if name == "hand-written":
                    accuracy[name] = json.loads(out.strip().splitlines()[-1])["accuracy"]
            record = json.loads((folder / "runs" / "table_bench" / "metrics.jsonl").read_text().splitlines()[-1])
            accuracy["trainkit"] = record["val_accuracy"]
            print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in commands))
    ratios = [t / h for t, h in zip(times["trainkit"], times["hand-written"], strict=True)]
    print()
    print(machine_line())
    print_table(
        ["contender", "median s", "rounds s", "test accuracy"],
        [[name, median(times[name]), " ".join(f"{t:.2f}" for t in times[name]), accuracy[name]] for name in commands],
    )
    verdict = "met" if median(ratios) <= TARGET else "NOT met"
    print(
        f"\ntrainkit / hand-written wall time: median {median(ratios):.3f} "
        f"(rounds {' '.join(f'{r:.3f}' for r in ratios)}); target <= {TARGET}: {verdict}"
    )


if __name__ == "__main__":
    main()
