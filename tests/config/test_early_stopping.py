"""Early stopping watches a metric the run records, the right way round, and says why it stopped."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import trainkit
from conftest import tiny_config, write_config
from helpers_ecosystem import regression_config
from trainkit.config import resolve
from trainkit.errors import ConfigError
from trainkit.training.loop import TrainState, _update_best


def _stopper(config: dict, **stop) -> dict:
    config["trainer"] = {**config["trainer"], "early_stopping": stop}
    return config


@pytest.mark.parametrize(
    "metric, message",
    [
        (
            "val_acuracy",
            "unknown metric 'val_acuracy'; did you mean 'val_accuracy'? "
            "(a classification run records: val_loss, val_accuracy, train_loss)",
        ),
        (
            "val_acc",
            "unknown metric 'val_acc'; did you mean 'val_accuracy'? "
            "(a classification run records: val_loss, val_accuracy, train_loss)",
        ),
        ("val_mae", "unknown metric 'val_mae' (a classification run records: val_loss, val_accuracy, train_loss)"),
    ],
)
def test_a_metric_the_task_does_not_record_is_a_config_error(cli, tmp_path, metric, message):
    path = write_config(tmp_path / "c.yaml", _stopper(tiny_config(tmp_path), metric=metric))
    code, out, err = cli("validate", path)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {path}: line ") and err.endswith(f": trainer.early_stopping.metric: {message}\n")
    code, _, err = cli("train", path, "-q")
    assert code == 2 and message in err
    assert not (tmp_path / "ckpt").exists()


def test_regression_metrics_include_r2_and_exclude_accuracy(tmp_path):
    for metric in ("val_loss", "val_mse", "val_mae", "val_r2", "train_loss"):
        resolve(_stopper(regression_config(tmp_path), metric=metric))
    with pytest.raises(ConfigError) as exc:
        resolve(_stopper(regression_config(tmp_path), metric="val_accuracy"))
    assert str(exc.value) == (
        "trainer.early_stopping.metric: unknown metric 'val_accuracy' "
        "(a regression run records: val_loss, val_mse, val_mae, val_r2, train_loss)"
    )


@pytest.mark.parametrize(
    "metric, mode",
    [("val_accuracy", "max"), ("val_r2", "max"), ("val_loss", "min"), ("val_mae", "min"), ("train_loss", "min")],
)
def test_the_mode_follows_the_metric_and_is_recorded(tmp_path, metric, mode):
    config = regression_config(tmp_path) if metric in ("val_r2", "val_mae") else tiny_config(tmp_path)
    cfg = resolve(_stopper(config, metric=metric))
    assert cfg.trainer.early_stopping.mode == mode
    assert cfg.to_dict()["trainer"]["early_stopping"]["mode"] == mode  # config.yaml says what runs


def test_an_explicit_mode_wins(tmp_path):
    cfg = resolve(_stopper(tiny_config(tmp_path), metric="val_accuracy", mode="min"))
    assert cfg.trainer.early_stopping.mode == "min"


def test_rising_accuracy_is_an_improvement(tmp_path):
    """The run of the report: accuracy 0.542 then 0.980 must not count as getting worse."""
    stopper = resolve(_stopper(tiny_config(tmp_path), metric="val_accuracy", patience=1)).trainer.early_stopping
    run = SimpleNamespace(monitor=("val_accuracy", "max"), early_stopping=stopper)
    state = TrainState()
    for epoch, accuracy in enumerate([0.542, 0.980]):
        state.epoch = epoch
        _update_best(run, state, {"val_accuracy": accuracy})
        assert not state.stopped_early
    assert state.stop_metric_best == 0.980 and state.bad_epochs == 0


def test_a_data_set_without_a_task_trait_is_checked_when_built(cli, tmp_path, isolated_registries):
    """Without `task=` at registration, validate checks the name against every task's metrics,
    and the run checks it against its own task before the first step (exit 2, no run folder)."""
    from trainkit import DATASETS
    from trainkit.builtin.datasets import synthetic_regression

    DATASETS.register("untyped_line")(synthetic_regression)  # the same builder, no task declared
    config = regression_config(tmp_path)
    config["data"]["name"] = "untyped_line"
    code, _, err = cli("validate", write_config(tmp_path / "a.yaml", _stopper(dict(config), metric="val_acc")))
    assert code == 2 and "unknown metric 'val_acc'; did you mean 'val_accuracy'? (runs record: " in err
    path = write_config(tmp_path / "b.yaml", _stopper(dict(config), metric="val_accuracy"))
    assert cli("validate", path)[0] == 0
    code, _, err = cli("train", path, "-q")
    assert code == 2
    assert err == (
        "error: trainer.early_stopping.metric: unknown metric 'val_accuracy' "
        "(a regression run records: val_loss, val_mse, val_mae, val_r2, train_loss)\n"
    )
    assert not (tmp_path / "ckpt").exists()


def test_a_run_that_stops_early_says_why(cli, tmp_path):
    stop = {"metric": "val_loss", "patience": 1, "min_delta": 10.0}  # no epoch improves by 10: stops after 2
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, trainer={"epochs": 5, "early_stopping": stop}))
    code, out, err = cli("train", path, "-q")
    assert code == 0, err
    run = tmp_path / "ckpt" / "tiny"
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    best = epochs[0]["val_loss"]
    reason = f"val_loss did not improve by more than 10 on {best:.4f} (epoch 1) for 1 epoch"
    assert out.startswith(f"trained 2 epochs (stopped early: {reason}), 12 steps; ")
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "complete" and status["stopped_early"] is True
    assert status["message"] == f"stopped early: {reason}"
    result = trainkit.resume(run, quiet=True)
    assert result["early_stop"] == {
        "metric": "val_loss",
        "mode": "min",
        "best": best,
        "best_epoch": 1,
        "epochs_without_improvement": 1,
        "patience": 1,
        "min_delta": 10.0,
    }
