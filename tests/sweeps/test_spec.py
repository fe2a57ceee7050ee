"""The sweep file is checked like a config: every problem at once, with its line, exit 2, and no
trial (nor sweep folder) started; ranges are checked against the base config before anything runs."""

from __future__ import annotations

import importlib.util

import pytest
from sweep_helpers import write_sweep

from conftest import tiny_config, write_config
from trainkit.sweeps.spec import load_sweep


def _write(tmp_path, text: str):
    write_config(tmp_path / "base.yaml", tiny_config(tmp_path))
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_every_problem_of_the_file_at_once_with_its_line(tmp_path, cli):
    path = _write(
        tmp_path,
        "name: bad\n"
        "config: base.yaml\n"
        "overides: [trainer.epochs=1]\n"
        "objective: {metric: val_acc, mode: max}\n"
        "params:\n"
        "  optimizer.lr: {type: loguniform, low: 0, high: 1.0}\n"
        "  seed: {type: choise, values: [1, 2]}\n"
        "  data.batch_size: {type: int, low: 8, high: 64, step: 5}\n"
        "  model.hidden: {tipe: int}\n"
        "trials: 0\n"
        "pruner: {name: median, warmup: 1}\n",
    )
    code, out, err = cli("sweep", path)
    assert code == 2 and out == ""
    assert err == (
        f"error: {path}: 8 problems in the sweep file:\n"
        "  - line 3: overides: unknown key; did you mean 'overrides'?\n"
        "  - line 4: objective.metric: should be a metric of the epoch record (val_loss, val_accuracy, val_mse, "
        "val_mae, train_loss), got 'val_acc'; did you mean 'val_accuracy'?\n"
        "  - line 6: params.optimizer.lr.low: should be greater than 0, got 0\n"
        "  - line 7: params.seed.type: should be one of uniform, loguniform, int, choice, got 'choise'\n"
        "  - line 8: params.data.batch_size.step: high - low (56) should be a multiple of step 5\n"
        "  - line 9: params.model.hidden.type: required key is missing (one of uniform, loguniform, int, choice)\n"
        "  - line 10: trials: should be greater than 0, got 0\n"
        "  - line 11: pruner.warmup: unknown key; did you mean 'warmup_epochs'?\n"
    )
    assert not (tmp_path / "ckpt").exists()


def test_ranges_and_choices_are_checked_against_the_base_config(tmp_path, cli):
    path = _write(
        tmp_path,
        "config: base.yaml\n"
        "params:\n"
        "  optimizer.lrr: {type: uniform, low: 0.1, high: 0.2}\n"
        "  data.batch_size: {type: int, low: 0, high: 64}\n"
        "  model.dropout: {type: uniform, low: 0.5, high: 1.5}\n"
        "  trainer.epochs: {type: uniform, low: 1, high: 3}\n"
        "  model.name: {type: choice, values: [cnn, resnet]}\n"
        "  name: {type: choice, values: [a, b]}\n"
        "  seed.x: {type: choice, values: [1]}\n"
        "trials: 4\n",
    )
    code, _, err = cli("sweep", path)
    assert code == 2
    assert err.splitlines() == [
        f"error: {path}: 7 problems in the sweep file:",
        "  - line 3: params.optimizer.lrr: optimizer.lrr: optimizer 'adam' has no option 'lrr'; did you mean 'lr'? "
        "(optimizer keys: lr, betas, eps, weight_decay, amsgrad, param_groups, "
        "no_decay_norm_and_bias)",
        "  - line 4: params.data.batch_size: low 0 makes an invalid config: data.batch_size: should be greater than 0, "
        "got 0",
        "  - line 5: params.model.dropout: high 1.5 makes an invalid config: model.dropout: should be less than 1, "
        "got 1.5",
        "  - line 6: params.trainer.epochs.type: trainer.epochs takes whole numbers; use type: int (or choice)",
        "  - line 7: params.model.name: value 'resnet' makes an invalid config: model.name: unknown model 'resnet' "
        "(known: cnn, fast_cnn, linear_regression, mlp)",
        "  - line 8: params.name: cannot be swept: each trial's name is set by the sweep (trial-NNNN)",
        "  - line 9: params.seed.x: value 1 makes an invalid config: seed is a value, not a section",
    ]


def test_the_base_config_and_grid_are_checked_too(tmp_path, cli):
    path = _write(
        tmp_path,
        "config: missing.yaml\n"
        "params:\n"
        "  optimizer.lr: {type: uniform, low: 0.1, high: 0.2}\n"
        "sampler: grid\n"
        "heartbeat: {interval: 10, grace_period: 5}\n",
    )
    code, _, err = cli("sweep", path)
    assert code == 2
    assert err.splitlines()[1:] == [
        f"  - line 1: config: config file not found: {tmp_path / 'missing.yaml'}",
        "  - line 3: params.optimizer.lr: the grid sampler needs every param given as type: choice",
        "  - line 5: heartbeat.grace_period: should be longer than the interval (10 s), got 5",
    ]
    path.write_text("config: base.yaml\nparams: {seed: {type: choice, values: [0, 1]}}\nsampler: grid\ntrials: 3\n")
    code, _, err = cli("sweep", path)
    assert err == f"error: {path}: line 4: trials: 3 is more than the 2 points of the grid\n"


def test_the_base_configs_own_problems_name_its_file(tmp_path, cli):
    path = write_sweep(
        tmp_path, params={"seed": {"type": "choice", "values": [0, 1]}}, overrides=["trainer.epoch=1"], trials=2
    )
    code, _, err = cli("sweep", path, "--json")
    assert code == 2
    assert err == (
        f"error: {path}: line 2: config: {tmp_path / 'base.yaml'}: override 'trainer.epoch=1': trainer.epoch: "
        "unknown key; did you mean 'epochs'?\n"
    )


def test_a_valid_file_defaults_and_grid_size(tmp_path):
    path = write_sweep(
        tmp_path,
        params={"seed": {"type": "choice", "values": [0, 1, 2]}, "model.hidden": {"type": "choice", "values": [8, 16]}},
        sampler="grid",
    )
    sweep = load_sweep(path)
    assert sweep.trials == 6
    assert sweep.folder == tmp_path / "ckpt" / "search"
    assert sweep.spec.objective.metric == "val_loss" and sweep.spec.pruner.name == "none"
    cfg = sweep.trial_config({"seed": 2, "model.hidden": 8}, "trial-0003")
    assert cfg.seed == 2 and cfg.model.options()["hidden"] == 8 and cfg.run_dir == sweep.folder / "trial-0003"


def test_without_optuna_one_line_names_the_extra(tmp_path, cli, monkeypatch):
    path = write_sweep(tmp_path, params={"seed": {"type": "choice", "values": [0, 1]}}, trials=2)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    code, _, err = cli("sweep", path)
    assert (code, err) == (2, "error: sweeps need Optuna: pip install 'trainkit[sweep]'\n")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "--storage: mysql is not supported; give postgresql://... or sqlite:///FILE"),
        ("not a url", "--storage: not a database URL: 'not a url' (e.g. postgresql://user@host/db)"),
    ],
)
def test_storage_urls_are_checked(tmp_path, cli, url, message):
    path = write_sweep(tmp_path, params={"seed": {"type": "choice", "values": [0, 1]}}, trials=2)
    code, _, err = cli("sweep", path, "--storage", url)
    assert (code, err) == (2, f"error: {message}\n")
    assert not (tmp_path / "ckpt").exists()


def test_postgresql_without_psycopg_names_the_extra(tmp_path, cli, monkeypatch):
    path = write_sweep(tmp_path, params={"seed": {"type": "choice", "values": [0, 1]}}, trials=2)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    code, _, err = cli("sweep", path, "--storage", "postgresql://me:secret@db.example/sweeps")
    assert (code, err) == (2, "error: PostgreSQL storage needs psycopg: pip install 'trainkit[sweep]'\n")
