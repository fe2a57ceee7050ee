"""Fine-tuning: freeze, freeze_bn, parameter groups, no_decay_norm_and_bias, unfreeze_at_epoch,
and resume across the unfreeze bit for bit."""

from __future__ import annotations

import pytest
import torch

import trainkit
from conftest import assert_same_tensors, load_ckpt, metric_history, tiny_config, write_config
from trainkit.errors import ConfigError, TrainingInterrupted
from trainkit.training.finetune import unused_parameters
from trainkit.training.session import Session

# 96 samples / batch 16 = 6 steps per epoch
FAST_CNN = {"name": "fast_cnn", "widths": [4, 8]}


def _config(tmp_path, name="run", **sections):
    config = tiny_config(tmp_path, name=name, **sections)
    if "name" in sections.get("model", {}):  # another model: none of the tiny cnn's options
        config["model"] = sections["model"]
    return config


def _initial(tmp_path, config):
    """The weights the run starts from: the same seeded build, trained for zero steps."""
    from trainkit.config import resolve
    from trainkit.training.build import build
    from trainkit.training.distributed import DistContext

    return {k: v.clone() for k, v in build(resolve(config), DistContext(), training=False).module.state_dict().items()}


def test_frozen_parameters_are_bit_identical_after_training(tmp_path):
    config = _config(tmp_path, model={"freeze": ["conv1.*", "fc2.bias"]})
    start = _initial(tmp_path, config)
    trainkit.train(config, quiet=True)
    end = load_ckpt(tmp_path / "ckpt" / "run" / "last.pt")["model"]
    for key in ("conv1.weight", "conv1.bias", "fc2.bias"):
        assert torch.equal(start[key], end[key]), key
    for key in ("conv2.weight", "fc1.weight", "fc2.weight"):
        assert not torch.equal(start[key], end[key]), key
    # left out of the optimizer: no state for them
    optimizer = load_ckpt(tmp_path / "ckpt" / "run" / "last.pt")["optimizer"]
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == 5


def test_freeze_bn_keeps_running_statistics_of_frozen_parts(tmp_path):
    config = _config(tmp_path, model={**FAST_CNN, "freeze": ["blocks.0.*"], "freeze_bn": True})
    start = _initial(tmp_path, config)
    trainkit.train(config, quiet=True)
    end = load_ckpt(tmp_path / "ckpt" / "run" / "last.pt")["model"]
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(start[f"blocks.0.0.2.{key}"], end[f"blocks.0.0.2.{key}"]), key
        assert not torch.equal(start[f"blocks.1.0.2.{key}"], end[f"blocks.1.0.2.{key}"]), key
    # without freeze_bn the frozen block's statistics still follow the data
    trainkit.train(_config(tmp_path, "plain", model={**FAST_CNN, "freeze": ["blocks.0.*"]}), quiet=True)
    plain = load_ckpt(tmp_path / "ckpt" / "plain" / "last.pt")["model"]
    assert not torch.equal(start["blocks.0.0.2.running_mean"], plain["blocks.0.0.2.running_mean"])


def test_param_groups_first_match_wins_and_no_decay(tmp_path):
    config = _config(
        tmp_path,
        optimizer={
            "name": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "weight_decay": 0.001,
            "no_decay_norm_and_bias": True,
            "param_groups": [
                {"params": "fc2.*", "lr": 0.1, "momentum": 0.5},
                {"params": ["fc*", "conv2.*"], "lr": 0.05},
            ],
        },
    )
    trainkit.train(config, quiet=True)
    groups = load_ckpt(tmp_path / "ckpt" / "run" / "last.pt")["optimizer"]["param_groups"]
    # default (decay, no decay), fc2 (decay, no decay), fc1+conv2 (decay, no decay); params are indices
    summary = [(g["lr"], g["momentum"], g["weight_decay"], len(g["params"])) for g in groups]
    assert summary == [
        (0.01, 0.9, 0.001, 1),  # conv1.weight
        (0.01, 0.9, 0.0, 1),  # conv1.bias
        (0.1, 0.5, 0.001, 1),  # fc2.weight: the first group that matches
        (0.1, 0.5, 0.0, 1),
        (0.05, 0.9, 0.001, 2),  # conv2.weight, fc1.weight
        (0.05, 0.9, 0.0, 2),
    ]
    # the records' lr is the default group's
    assert metric_history(tmp_path / "ckpt" / "run")[-1]["lr"] == 0.01


def test_onecycle_peaks_every_group_at_its_own_lr(tmp_path):
    config = _config(
        tmp_path,
        optimizer={"name": "sgd", "lr": 0.01, "param_groups": [{"params": "fc2.*", "lr": 0.1}]},
        scheduler={"name": "onecycle", "pct_start": 0.5},
    )
    trainkit.train(config, quiet=True)
    groups = load_ckpt(tmp_path / "ckpt" / "run" / "last.pt")["optimizer"]["param_groups"]
    assert [g["max_lr"] for g in groups] == [0.01, 0.1]


def test_unfreeze_at_epoch_trains_frozen_parameters_from_that_epoch(tmp_path, capsys):
    config = _config(
        tmp_path,
        model={"freeze": ["conv1.*"]},
        optimizer={"name": "sgd", "lr": 0.05, "param_groups": [{"params": "conv*", "lr": 0.01}]},
        trainer={"epochs": 3, "unfreeze_at_epoch": 3, "log_every": 2, "device": "cpu"},
        checkpoint={"dir": str(tmp_path / "ckpt"), "keep_last": 20},
    )
    start = _initial(tmp_path, config)
    trainkit.train(config, quiet=True)
    run = tmp_path / "ckpt" / "run"
    after_two = load_ckpt(run / "step-000000012.pt")
    assert torch.equal(after_two["model"]["conv1.weight"], start["conv1.weight"])
    final = load_ckpt(run / "last.pt")
    assert not torch.equal(final["model"]["conv1.weight"], start["conv1.weight"])
    # conv1 joined its group (conv*: lr 0.01) with conv2: 2 parameters before, 4 after
    assert [len(g["params"]) for g in after_two["optimizer"]["param_groups"]] == [4, 2]
    assert [len(g["params"]) for g in final["optimizer"]["param_groups"]] == [4, 4]


RESUME = {
    "model": {**FAST_CNN, "freeze": ["blocks.0.*"], "freeze_bn": True},
    "optimizer": {
        "name": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.001,
        "no_decay_norm_and_bias": True,
        "param_groups": [{"params": "head.*", "lr": 0.2}],
    },
    "scheduler": {"name": "onecycle"},
}


def _resume_config(tmp_path, name):
    config = _config(tmp_path, name=name, **RESUME)
    config["trainer"] = {**config["trainer"], "epochs": 3, "unfreeze_at_epoch": 2}
    return config


@pytest.fixture(scope="module")
def unfreeze_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unfreeze")
    trainkit.train(_resume_config(tmp, "ref"), quiet=True)
    return tmp / "ckpt" / "ref"


def _final(run_dir):
    ckpt = load_ckpt(run_dir / "last.pt")
    for wall_clock in ("saved_at", "metrics_offset", "config"):
        ckpt.pop(wall_clock)
    return ckpt


# 6 steps an epoch; the unfreeze is at the start of epoch 2 (step 7)
@pytest.mark.parametrize("step", [3, 6, 7, 9])
def test_resume_across_the_unfreeze_is_bit_identical(tmp_path, monkeypatch, unfreeze_reference, step):
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == step)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(_resume_config(tmp_path, "run"), quiet=True)
    monkeypatch.undo()
    run_dir = tmp_path / "ckpt" / "run"
    trainkit.resume(run_dir, quiet=True)
    assert_same_tensors(_final(run_dir), _final(unfreeze_reference))
    assert metric_history(run_dir) == metric_history(unfreeze_reference)


def test_resume_refuses_to_change_what_defines_the_fine_tuning(tmp_path, cli):
    trainkit.train(_resume_config(tmp_path, "run") | {"trainer": {"epochs": 1, "device": "cpu"}}, quiet=True)
    run_dir = tmp_path / "ckpt" / "run"
    for override, key in [
        ("model.freeze=[head.*]", "model.freeze"),
        ("model.init_from=elsewhere", "model.init_from"),
        ("optimizer.param_groups=[]", "optimizer.param_groups"),
        ("trainer.unfreeze_at_epoch=2", "trainer.unfreeze_at_epoch"),
    ]:
        code, _, err = cli("resume", run_dir, "trainer.epochs=3", override)
        assert code == 2, (override, err)
        assert err.startswith(f"error: {key}: cannot be changed for the run in "), err


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"model": {"freeze": ["conv9.*"]}},
            "error: model.freeze: 'conv9.*' matches no parameter; the model's parameter names look like "
            "conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc1.weight, fc1.bias, ... (8 in all)\n",
        ),
        (
            {"model": {"freeze": ["*"]}},
            "error: model.freeze: matches every parameter of the model (8); nothing would train\n",
        ),
        (
            {"optimizer": {"name": "adam", "param_groups": [{"params": "head.*", "lr": 0.1}]}},
            "error: optimizer.param_groups[0].params: 'head.*' matches no parameter; the model's parameter "
            "names look like conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc1.weight, fc1.bias, ... "
            "(8 in all)\n",
        ),
    ],
)
def test_patterns_that_do_not_fit_the_model(tmp_path, cli, sections, message):
    path = write_config(tmp_path / "cfg.yaml", _config(tmp_path, **sections))
    code, _, err = cli("train", path, "-q")
    assert (code, err) == (2, message)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"optimizer": {"name": "adam", "param_groups": [{"params": "fc*", "lrr": 0.1}]}},
            "optimizer.param_groups.0.lrr: optimizer 'adam' has no option 'lrr'; did you mean 'lr'? "
            "(options: lr, betas, eps, weight_decay, amsgrad)",
        ),
        (
            {"optimizer": {"name": "adam", "param_groups": [{"params": "fc*", "lr": -1}]}},
            "optimizer.param_groups.0.lr: should be greater than 0, got -1",
        ),
        (
            {"trainer": {"unfreeze_at_epoch": 2}},
            "trainer.unfreeze_at_epoch: needs model.freeze: the parameters to unfreeze",
        ),
        (
            {"model": {"freeze": ["conv1.*"]}, "trainer": {"unfreeze_at_epoch": 3, "epochs": 2}},
            "trainer.unfreeze_at_epoch: 3 is past the last epoch (trainer.epochs is 2)",
        ),
        (
            {"model": {"freeze_bn": True}},
            "model.freeze_bn: needs model.freeze: the parts whose batch norm to keep fixed",
        ),
    ],
)
def test_fine_tuning_config_mistakes(tmp_path, cli, sections, message):
    config = _config(tmp_path, **sections)
    config["trainer"] = {"device": "cpu", **sections.get("trainer", {})}
    code, _, err = cli("validate", write_config(tmp_path / "cfg.yaml", config))
    assert code == 2
    assert err.endswith(f"{message}\n") and err.count("\n") == 1, err


def test_group_option_the_built_optimizer_does_not_take(isolated_registries, tmp_path):
    from trainkit.registry import OPTIMIZERS

    @OPTIMIZERS.register("plain_sgd")
    def plain_sgd(params, lr: float = 0.1, scale: float = 1.0):
        return torch.optim.SGD(params, lr=lr * scale)

    config = _config(tmp_path, optimizer={"name": "plain_sgd", "param_groups": [{"params": "fc*", "scale": 2.0}]})
    with pytest.raises(ConfigError, match=r"optimizer.param_groups\[0\].scale: optimizer 'plain_sgd' does not take"):
        trainkit.train(config, quiet=True)


def test_unused_parameters_are_found_on_the_meta_device():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused, self.frozen = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.used(self.frozen(x))

    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert unused_parameters(net, (4,)) == ["unused.weight", "unused.bias"]
    net.frozen.requires_grad_(False)
    assert unused_parameters(net, (4,)) == ["unused.weight", "unused.bias"]
    net.unused.requires_grad_(False)
    assert unused_parameters(net, (4,)) == []
    assert_same_tensors(dict(net.state_dict()), before)
