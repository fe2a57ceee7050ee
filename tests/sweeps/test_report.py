"""What a sweep shows, from its folder alone: the table, the plot, `trainkit runs` grouping its
trials, mean and spread over seeds, the objective read from a run's metrics."""

from __future__ import annotations

import json
import statistics

import pytest
from rich.console import Console

from trainkit.runfolder.runlog import write_status
from trainkit.sweeps import layout
from trainkit.sweeps.report import objective_value, over_seeds
from trainkit.sweeps.spec import Objective
from trainkit.tools.sweeps import best_line, seeds_table, sweep_table


def _summary(folder):
    trials = [
        {"number": 0, "state": "complete", "params": {"optimizer.lr": 0.01, "seed": 0}, "value": 0.8},
        {"number": 1, "state": "pruned", "params": {"optimizer.lr": 0.5, "seed": 0}, "value": None},
        {"number": 2, "state": "complete", "params": {"optimizer.lr": 0.01, "seed": 1}, "value": 0.9},
        {"number": 4, "state": "failed", "params": {"optimizer.lr": 0.9, "seed": 1}, "value": None, "error": "boom"},
    ]
    for trial in trials:
        trial |= {"run_dir": str(folder / layout.trial_name(trial["number"])), "seconds": 61.0, "attempts": [0]}
    return {
        "sweep": "search",
        "folder": str(folder),
        "objective": {"metric": "val_accuracy", "mode": "max", "value": "last"},
        "params": {
            "optimizer.lr": {"type": "loguniform", "low": 0.001, "high": 1.0},
            "seed": {"type": "choice", "values": [0, 1]},
        },
        "trials_total": 5,
        "best": {k: trials[2][k] for k in ("number", "value", "params", "run_dir")},
        "trials": trials,
        "configurations": over_seeds(trials, "max"),
    }


def test_the_table_and_the_seeds(tmp_path):
    summary = _summary(tmp_path)
    console = Console(width=200, color_system=None, record=True)
    console.print(sweep_table(summary))
    console.print(seeds_table(summary))
    text = console.export_text()
    assert "sweep search: 4/5 trials done, max val_accuracy" in text
    assert "trial-0004" in text and "failed: boom" in text and "1:01" in text
    assert "val_accuracy over seeds" in text
    (group,) = summary["configurations"]
    assert group["params"] == {"optimizer.lr": 0.01} and group["n"] == 2 and sorted(group["seeds"]) == [0, 1]
    assert group["mean"] == pytest.approx(0.85) and group["std"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert best_line(summary) == f"best: trial-0002, val_accuracy 0.9; its config: {tmp_path / 'best.yaml'}"


def test_plot_of_a_sweep_folder(tmp_path, cli):
    (tmp_path / layout.SWEEP).write_text("{}")
    (tmp_path / layout.SUMMARY).write_text(json.dumps(_summary(tmp_path)))
    code, out, err = cli("plot", tmp_path, "-o", tmp_path / "sweep.png")
    assert code == 0, err
    assert out == f"wrote {tmp_path / 'sweep.png'}\n"
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / layout.SUMMARY).unlink()
    code, _, err = cli("plot", tmp_path)
    assert (code, err) == (2, f"error: {tmp_path}: no trial has finished yet (no summary.json)\n")


def test_runs_lists_a_sweeps_trials_together(tmp_path, cli):
    (tmp_path / "alone").mkdir()
    write_status(tmp_path / "alone", "complete", epoch=1, epochs=1)
    sweep = tmp_path / "search"
    sweep.mkdir()
    (sweep / layout.SWEEP).write_text("{}")
    for number, status in ((0, "complete"), (1, "pruned")):
        (sweep / layout.trial_name(number)).mkdir()
        write_status(sweep / layout.trial_name(number), status, epoch=1, epochs=2)
    code, out, _ = cli("runs", tmp_path, "--json")
    rows = [(r["name"], r["status"], r.get("sweep")) for r in json.loads(out)]
    assert rows == [
        ("alone", "complete", None),
        ("search/trial-0000", "complete", "search"),
        ("search/trial-0001", "pruned", "search"),
    ]
    code, out, _ = cli("runs", sweep)  # the sweep folder itself: its trials
    assert code == 0 and "trial-0001" in out and "pruned" in out


def test_the_objective_is_the_last_or_the_best_epoch(tmp_path):
    records = [{"type": "epoch", "epoch": e, "val_loss": v} for e, v in ((1, 0.5), (2, 0.3), (3, 0.4))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert objective_value(tmp_path, Objective(metric="val_loss")) == 0.4
    assert objective_value(tmp_path, Objective(metric="val_loss", value="best")) == 0.3
    assert objective_value(tmp_path, Objective(metric="val_accuracy")) is None
