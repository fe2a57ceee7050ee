"""A sink may stop a run as pruned: the run saves a checkpoint first, its folder says "pruned",
and it is not resumed. A sweep's median pruner stops a trial that does worse than the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sweep_helpers import write_sweep

from conftest import load_ckpt, tiny_config
from trainkit import api
from trainkit.runfolder.runlog import read_status
from trainkit.sweeps.worker import TrialPruned


class PruneAt:
    """Stops the run at the first record of this type and epoch, and remembers how it ended."""

    def __init__(self, kind: str, epoch: int):
        self.kind, self.epoch, self.ended = kind, epoch, None

    def start(self, run_dir: Path, config: dict, step: int) -> None:
        pass

    def record(self, record: dict) -> None:
        if record["type"] == self.kind and record["epoch"] == self.epoch:
            raise TrialPruned(f"pruned in epoch {self.epoch}")

    def checkpoint(self, path: Path, is_best: bool, step: int) -> None:
        pass

    def finish(self, status: str, message: str | None) -> None:
        self.ended = (status, message)


@pytest.mark.parametrize(("kind", "epoch", "step"), [("epoch", 1, 6), ("train", 2, 8)])
def test_a_pruned_run_stops_after_a_checkpoint_and_is_not_resumed(tmp_path, kind, epoch, step):
    """At an epoch's end, or mid-epoch at a train record (log_every=2: step 8 is in epoch 2)."""
    config = tiny_config(tmp_path, trainer={"epochs": 3})
    sink = PruneAt(kind, epoch)
    with pytest.raises(TrialPruned, match=f"pruned in epoch {epoch}"):
        api.train(config, quiet=True, sinks=[sink])
    run_dir = tmp_path / "ckpt" / "tiny"
    status = read_status(run_dir)
    assert (status["status"], status["step"], status["message"]) == ("pruned", step, f"pruned in epoch {epoch}")
    assert sink.ended == ("pruned", f"pruned in epoch {epoch}")
    saved = load_ckpt(run_dir / "last.pt")
    assert saved["step"] == step and saved["state"]["stopped_early"] is True
    assert json.loads((run_dir / "latest.json").read_text())["step"] == step
    again = api.resume(run_dir, quiet=True)  # nothing left to train: it says so and trains nothing
    assert again["already_complete"] and "is already complete" in again["message"]
    assert load_ckpt(run_dir / "last.pt")["step"] == step


@pytest.mark.slow
def test_the_median_pruner_stops_the_worse_trial(tmp_path, cli, monkeypatch):
    """The grid's first point (seed 1) is the good learning rate; the second, hopeless one is
    pruned after its first epoch, as the median of the first trial's epoch-1 loss says."""
    path = write_sweep(
        tmp_path,
        base=tiny_config(tmp_path, trainer={"epochs": 3}),
        objective={"metric": "val_loss", "mode": "min"},
        params={"optimizer.lr": {"type": "choice", "values": [0.02, 1.0e-6]}},
        sampler={"name": "grid", "seed": 1},
        pruner={"name": "median", "startup_trials": 1},
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("sweep", path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    states = [(t["params"]["optimizer.lr"], t["state"]) for t in summary["trials"]]
    assert states == [(0.02, "complete"), (1.0e-6, "pruned")]
    pruned = Path(summary["trials"][1]["run_dir"])
    status = read_status(tmp_path / pruned)
    assert (status["status"], status["epoch"]) == ("pruned", 1)
    assert (tmp_path / pruned / "last.pt").exists()
    runs = json.loads(cli("runs", "ckpt", "--json")[1])
    assert [(r["name"], r["status"]) for r in runs] == [
        ("search/trial-0000", "complete"),
        ("search/trial-0001", "pruned"),
    ]
    code, out, err = cli("resume", pruned)  # its sweep ended it: resume says so and trains nothing
    assert code == 0, err
    ended = "a run its sweep ended is not continued: train a new run instead"
    assert out == f"{pruned} is already complete (pruned); {ended}\n"
