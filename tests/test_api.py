"""The Python API: trainkit.train / evaluate / resume take a dict or a path and return plain
dicts (JSON-serialisable numbers and strings) that agree with the files they wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import trainkit
from conftest import tiny_config, write_config
from helpers_ecosystem import regression_config
from trainkit.errors import RunExistsError, TrainkitError, UsageError
from trainkit.runfolder.runlog import read_records

TRAIN_KEYS = {
    "run_dir",
    "epochs",
    "step",
    "best_metric",
    "best_epoch",
    "monitor",
    "stopped_early",
    "early_stop",
    "already_complete",
    "final",
    "history",
    "last_checkpoint",
    "best_checkpoint",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    return base, trainkit.train(tiny_config(base), overrides=["trainer.epochs=2", "optimizer.lr=0.02"], quiet=True)


def test_train_from_a_dict_returns_the_run_summary(trained):
    base, result = trained
    assert set(result) == TRAIN_KEYS
    json.dumps(result)  # plain data only
    run_dir = base / "ckpt" / "tiny"
    assert result["run_dir"] == str(run_dir)
    assert result["epochs"] == 2 and result["step"] == 12  # 96 samples / batch 16 = 6 steps per epoch
    assert result["stopped_early"] is False and result["monitor"] == "val_accuracy"
    assert result["history"] == read_records(run_dir, "epoch")
    assert result["final"] == result["history"][-1]
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    accuracies = [r["val_accuracy"] for r in result["history"]]
    assert result["best_metric"] == max(accuracies)
    assert result["best_epoch"] == accuracies.index(max(accuracies)) + 1
    assert result["last_checkpoint"] == str(run_dir / "last.pt") and Path(result["last_checkpoint"]).exists()
    assert result["best_checkpoint"] == str(run_dir / "best.pt") and Path(result["best_checkpoint"]).exists()
    # the overrides were applied and saved with the run
    assert "lr: 0.02" in (run_dir / "config.yaml").read_text()


def test_evaluate_returns_the_metrics_of_the_best_epoch(trained):
    _, result = trained
    metrics = trainkit.evaluate(result["best_checkpoint"])
    assert set(metrics) == {"split", "samples", "loss", "accuracy"}
    json.dumps(metrics)
    best = result["history"][result["best_epoch"] - 1]
    assert metrics["split"] == "test" and metrics["samples"] == 40
    assert metrics["accuracy"] == best["val_accuracy"]
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    # a run folder means its best.pt; the train split has all 96 samples
    assert trainkit.evaluate(result["run_dir"]) == metrics
    assert trainkit.evaluate(result["last_checkpoint"], "train")["samples"] == 96


def test_resume_extends_a_finished_run(tmp_path):
    first = trainkit.train(tiny_config(tmp_path), ["trainer.epochs=1"], quiet=True)
    more = trainkit.resume(first["run_dir"], overrides=["trainer.epochs=3"], quiet=True)
    assert set(more) == TRAIN_KEYS
    assert more["run_dir"] == first["run_dir"]
    assert more["epochs"] == 3 and more["step"] == 18
    assert [r["epoch"] for r in more["history"]] == [1, 2, 3]
    assert more["history"][0] == first["history"][0]  # the first epoch is not redone
    assert more["best_metric"] == max(r["val_accuracy"] for r in more["history"])


def test_train_from_a_yaml_path_takes_its_name_from_the_file(tmp_path):
    config = tiny_config(tmp_path)
    del config["name"]
    path = write_config(tmp_path / "from_file.yaml", config)
    result = trainkit.train(path, ["trainer.epochs=1"], quiet=True)
    assert result["run_dir"] == str(tmp_path / "ckpt" / "from_file") and result["epochs"] == 1


def test_regression_results(tmp_path):
    result = trainkit.train(regression_config(tmp_path), quiet=True)
    assert result["monitor"] == "val_loss"
    assert result["best_metric"] == min(r["val_loss"] for r in result["history"])
    metrics = trainkit.evaluate(result["best_checkpoint"])
    assert set(metrics) == {"split", "samples", "loss", "mse", "mae", "r2"} and metrics["samples"] == 16
    assert metrics["mse"] == metrics["loss"] == pytest.approx(result["best_metric"], rel=1e-5)


def test_errors_are_trainkit_errors_with_exit_codes(trained):
    base, result = trained
    with pytest.raises(RunExistsError, match="already holds a complete run") as exc:
        trainkit.train(tiny_config(base), quiet=True)
    assert exc.value.exit_code == 2
    assert trainkit.resume(result["run_dir"], quiet=True)["already_complete"] is True
    with pytest.raises(UsageError, match="split must be 'test' or 'train'"):
        trainkit.evaluate(result["best_checkpoint"], "val")
    with pytest.raises(TrainkitError, match="checkpoint not found"):
        trainkit.evaluate(base / "missing.pt")
    with pytest.raises(trainkit.ConfigError, match="optimizer.lr"):
        trainkit.train(tiny_config(base, name="bad"), ["optimizer.lr=-1"], quiet=True)


def test_a_run_through_the_api_leaves_the_process_as_it_found_it(tmp_path, monkeypatch, isolated_registries):
    """cuDNN's autotuner flag and sys.path are put back after train(); a notebook is not changed."""
    import sys

    import torch

    (tmp_path / "my_local_plugin.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)

    from trainkit.training import build

    real = build.prepare_device

    def prepare_like_cuda(cfg, device):  # what a CUDA run does to the flag, on this CPU machine
        torch.backends.cudnn.benchmark = True
        real(cfg, device)

    monkeypatch.setattr(build, "prepare_device", prepare_like_cuda)
    trainkit.train(tiny_config(tmp_path, imports=["my_local_plugin"], trainer={"epochs": 1}), quiet=True)
    assert "my_local_plugin" in sys.modules  # the working folder was on the path during the run
    assert sys.path == before and torch.backends.cudnn.benchmark is False


def test_a_failed_host_allocation_is_one_line_not_a_traceback():
    """torch's CPU allocator fails with a RuntimeError, not a MemoryError: the API names it."""
    import torch

    from trainkit.api import _api
    from trainkit.errors import OutOfMemoryError

    @_api
    def allocate() -> None:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PB: refused at once, before any page is touched

    with pytest.raises(OutOfMemoryError) as info:
        allocate()
    assert str(info.value) == (
        "out of host memory (allocating 1,125,899.9 GB failed); lower data.batch_size or data.eval_batch_size"
    )

    @_api
    def other() -> None:
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        other()
