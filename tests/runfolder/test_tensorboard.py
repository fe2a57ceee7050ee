"""logging.tensorboard: event files in <run>/tensorboard/ with the same numbers as
metrics.jsonl (learning rate included), each step once across a resume, and a clear config
error when the tensorboard package is missing."""

from __future__ import annotations

import json
import shutil

import pytest

import trainkit
from conftest import tiny_config, write_config
from helpers_ecosystem import train_tiny
from trainkit import plugins
from trainkit.runfolder.runlog import read_records

pytest.importorskip("tensorboard")

TB = {"tensorboard": True}
STEP_LR = {"name": "step", "step_size": 1, "gamma": 0.5}  # the lr halves every epoch: visible in the logs


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_event_files_hold_the_metrics_and_the_learning_rate(tmp_path):
    result = train_tiny(tmp_path, logging=TB, scheduler=STEP_LR, trainer={"epochs": 3})
    run_dir = tmp_path / "ckpt" / "tiny"
    assert result["run_dir"] == str(run_dir)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    scalars = _scalars(run_dir)
    assert {"train/loss", "train/lr", "epoch/train_loss", "epoch/val_loss", "epoch/val_accuracy", "epoch/lr"} <= set(
        scalars
    )

    epochs, train = read_records(run_dir, "epoch"), read_records(run_dir, "train")
    assert [s for s, _ in scalars["epoch/lr"]] == [r["step"] for r in epochs]
    assert [v for _, v in scalars["epoch/lr"]] == pytest.approx([r["lr"] for r in epochs])
    assert [v for _, v in scalars["epoch/lr"]] == pytest.approx([0.005, 0.0025, 0.00125])
    assert scalars["train/lr"] == [(r["step"], pytest.approx(r["lr"])) for r in train]
    assert scalars["epoch/val_loss"] == [(r["step"], pytest.approx(r["val_loss"])) for r in epochs]


def test_resume_after_a_kill_shows_each_step_once(tmp_path):
    """Events written after the last checkpoint by a killed run are hidden; the checkpoint's own stay."""
    train_tiny(tmp_path, logging=TB)  # 2 epochs: checkpoints at steps 6 and 12
    run_dir = tmp_path / "ckpt" / "tiny"
    before = _scalars(run_dir)
    # As if killed just before the step-12 save: its events are on disk, its checkpoint is not.
    (run_dir / "step-000000012.pt").unlink()
    shutil.copyfile(run_dir / "step-000000006.pt", run_dir / "last.pt.tmp")
    (run_dir / "last.pt.tmp").replace(run_dir / "last.pt")
    (run_dir / "latest.json").write_text(json.dumps({"checkpoint": "step-000000006.pt", "step": 6, "epoch": 1}))

    trainkit.resume(run_dir, quiet=True)
    after = _scalars(run_dir)
    for tag in ("train/loss", "train/lr", "epoch/val_loss"):
        steps = [s for s, _ in after[tag]]
        assert steps == sorted(set(steps)) == [s for s, _ in before[tag]], tag
    # the epoch-1 record (step 6, written before the checkpoint it precedes) is still there
    assert after["epoch/val_loss"][0] == before["epoch/val_loss"][0]
    assert after["epoch/val_loss"][1] == (12, pytest.approx(read_records(run_dir, "epoch")[1]["val_loss"]))


def test_no_event_files_unless_asked(tmp_path):
    train_tiny(tmp_path)
    assert not (tmp_path / "ckpt" / "tiny" / "tensorboard").exists()


def test_missing_tensorboard_package_is_a_config_error(cli, tmp_path, monkeypatch):
    real = plugins.has_module
    monkeypatch.setattr(plugins, "has_module", lambda name: name != "tensorboard" and real(name))
    path = write_config(tmp_path / "tb.yaml", tiny_config(tmp_path, logging=TB))
    for command in ("train", "validate"):
        code, out, err = cli(command, path)
        assert code == 2 and out == ""
        assert err.startswith(f"error: {path}: ") and len(err.strip().splitlines()) == 1
        assert err.strip().endswith(
            "logging.tensorboard: needs the tensorboard package: pip install 'trainkit[tensorboard]'"
        )
    assert not (tmp_path / "ckpt").exists(), "nothing may be written for a config that is refused"
