"""Guarantee 1: a run interrupted at any step and resumed ends bit-identical to the uninterrupted run.

Interruptions here are in-process (the stop request that SIGINT/SIGTERM would set is
raised at a chosen step); test_reliability.py does the same with real signals and kill -9.
"""

from __future__ import annotations

import shutil

import pytest

import trainkit
from conftest import assert_same_tensors, load_ckpt, metric_history, tiny_config
from trainkit.errors import TrainingInterrupted
from trainkit.training.session import Session

# 96 training samples / batch 16 = 6 batches per epoch, 3 epochs = 18 steps
VARIANTS = {
    "adam+dropout": {"model": {"dropout": 0.5}},
    "onecycle": {"scheduler": {"name": "onecycle"}, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "accumulate": {"trainer": {"accumulate_grad_batches": 4}, "scheduler": {"name": "cosine"}},
    "augment+clip": {"data": {"augment": {"crop_padding": 2, "hflip": True}}, "trainer": {"grad_clip": 0.5}},
    "limit+step": {"trainer": {"limit_batches": 4}, "scheduler": {"name": "step", "gamma": 0.5}},
}


def _config(tmp_path, name, variant):
    extra = VARIANTS[variant]
    config = tiny_config(tmp_path, name=name, **{k: v for k, v in extra.items() if k != "trainer"})
    config["trainer"] = {**config["trainer"], "epochs": 3, **extra.get("trainer", {})}
    return config


def _interrupt_at(monkeypatch, step):
    """Make the stop request (what SIGINT sets) appear right after optimizer step `step`."""

    def stop_requested(self, state):
        return state.step == step

    monkeypatch.setattr(Session, "stop_requested", stop_requested)


def _final(run_dir):
    ckpt = load_ckpt(run_dir / "last.pt")
    # wall-clock fields: when it was saved, and the byte length of metrics.jsonl, whose
    # epoch_time values differ in length (the records themselves are compared separately)
    ckpt.pop("saved_at")
    ckpt.pop("metrics_offset")
    return ckpt


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of every variant, trained once."""
    runs = {}
    for variant in VARIANTS:
        tmp = tmp_path_factory.mktemp(variant.replace("+", "_"))
        trainkit.train(_config(tmp, "ref", variant), quiet=True)
        runs[variant] = tmp / "ckpt" / "ref"
    return runs


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("step", [1, 3, 6, 7, 11])  # 6 = last step of epoch 1, 7 = first of epoch 2
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, reference, variant, step):
    config = _config(tmp_path, "run", variant)
    if variant == "accumulate":
        step = {1: 1, 3: 2, 6: 2, 7: 3, 11: 4}[step]  # 2 optimizer steps per epoch (6 batches / 4)
    if variant == "limit+step":
        step = min(step, 11)
    _interrupt_at(monkeypatch, step)
    with pytest.raises(TrainingInterrupted) as info:
        trainkit.train(config, quiet=True)
    assert info.value.step == step
    run_dir = tmp_path / "ckpt" / "run"
    monkeypatch.undo()
    trainkit.resume(run_dir, quiet=True)
    assert_same_tensors(_final(run_dir), _final(reference[variant]) | {"config": _final(run_dir)["config"]})
    assert _final(run_dir)["config"] == _final(reference[variant])["config"] | {
        "name": "run",
        "checkpoint": _final(run_dir)["config"]["checkpoint"],
    }
    assert metric_history(run_dir) == metric_history(reference[variant])


def test_resuming_twice_in_a_row(tmp_path, monkeypatch, reference):
    config = _config(tmp_path, "run", "adam+dropout")
    run_dir = tmp_path / "ckpt" / "run"
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(config, quiet=True)
    _interrupt_at(monkeypatch, 9)
    with pytest.raises(TrainingInterrupted):
        trainkit.resume(run_dir, quiet=True)
    monkeypatch.undo()
    trainkit.resume(run_dir, quiet=True)
    assert_same_tensors(_final(run_dir)["model"], _final(reference["adam+dropout"])["model"])
    assert metric_history(run_dir) == metric_history(reference["adam+dropout"])


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    short = tiny_config(tmp_path, name="short", model={"dropout": 0.3})
    short["trainer"]["epochs"] = 2
    trainkit.train(short, quiet=True)
    trainkit.resume(tmp_path / "ckpt" / "short", ["trainer.epochs=4"], quiet=True)
    long = tiny_config(tmp_path, name="long", model={"dropout": 0.3})
    long["trainer"]["epochs"] = 4
    trainkit.train(long, quiet=True)
    a, b = _final(tmp_path / "ckpt" / "short"), _final(tmp_path / "ckpt" / "long")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(a[key], b[key], key)


def test_early_stopping_is_exact_under_resume(tmp_path, monkeypatch):
    stop = {"metric": "val_loss", "mode": "min", "patience": 1, "min_delta": 10.0}  # stops after epoch 2
    config = tiny_config(tmp_path, name="es", trainer={"epochs": 5, "early_stopping": stop})
    result = trainkit.train(config, quiet=True)
    assert result["stopped_early"] and result["epochs"] == 2
    other = tiny_config(tmp_path, name="es2", trainer={"epochs": 5, "early_stopping": stop})
    _interrupt_at(monkeypatch, 6)  # the end of epoch 1, before early stopping triggers
    with pytest.raises(TrainingInterrupted):
        trainkit.train(other, quiet=True)
    monkeypatch.undo()
    resumed = trainkit.resume(tmp_path / "ckpt" / "es2", quiet=True)
    assert resumed["stopped_early"] and resumed["epochs"] == 2
    assert_same_tensors(_final(tmp_path / "ckpt" / "es2")["model"], _final(tmp_path / "ckpt" / "es")["model"])


def test_resume_from_a_copied_run_folder(tmp_path, monkeypatch, reference):
    """The run folder is self-contained: moved elsewhere, it still resumes into itself."""
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(_config(tmp_path, "run", "adam+dropout"), quiet=True)
    monkeypatch.undo()
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "ckpt" / "run", moved)
    trainkit.resume(moved, quiet=True)
    assert_same_tensors(_final(moved)["model"], _final(reference["adam+dropout"])["model"])
    assert not (tmp_path / "ckpt" / "run").exists()
