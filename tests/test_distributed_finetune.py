"""Fine-tuning under torch.distributed (gloo, 2 processes): a torchvision model with frozen
parts that unfreeze mid-run, resumed across the unfreeze bit for bit; DDP is told to look
for unused parameters only when some exist."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch

from conftest import TRAINKIT, assert_same_tensors, load_ckpt, metric_history, subprocess_env, tiny_config, write_config

pytestmark = pytest.mark.slow


def _config(tmp_path, name):
    config = tiny_config(
        tmp_path,
        name=name,
        data={"n_train": 64, "n_test": 16, "size": 16, "channels": 1, "batch_size": 8, "eval_batch_size": 8},
        optimizer={"name": "sgd", "lr": 0.02, "momentum": 0.9, "param_groups": [{"params": "fc.*", "lr": 0.1}]},
    )
    config["model"] = {"name": "torchvision.resnet18", "freeze": ["conv1.*", "bn1.*", "layer1.*"], "freeze_bn": True}
    config["trainer"].update(epochs=3, unfreeze_at_epoch=2, log_every=2)
    return config


def _nproc(*args, env=None, timeout=400):
    command = TRAINKIT + [*map(str, args), "--nproc", "2"]
    return subprocess.run(command, capture_output=True, text=True, env=env or subprocess_env(), timeout=timeout)


def test_torchvision_model_with_freezing_on_two_processes_resumes_across_the_unfreeze(tmp_path):
    reference = write_config(tmp_path / "ref.yaml", _config(tmp_path, "ref"))
    result = _nproc("train", reference)
    assert result.returncode == 0, result.stderr
    assert "find_unused_parameters" not in result.stderr  # every trainable parameter gets a gradient
    ref = tmp_path / "ckpt" / "ref"
    first = [r for r in metric_history(ref) if r["type"] == "epoch"]
    assert len(first) == 3

    # the same run, stopped by SIGTERM once epoch 2 (after the unfreeze) logs, then resumed
    run_dir = tmp_path / "ckpt" / "run"
    path = write_config(tmp_path / "run.yaml", _config(tmp_path, "run"))
    proc = subprocess.Popen(
        TRAINKIT + ["train", str(path), "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if any(r["type"] == "train" and r["epoch"] == 2 for r in records):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert "interrupted by SIGTERM" in err, err
    stopped = load_ckpt(run_dir / "last.pt")
    assert 6 <= stopped["step"] < 12, stopped["step"]  # in epoch 2 or 3: after the unfreeze
    resumed = _nproc("resume", run_dir, "-q")
    assert resumed.returncode == 0, resumed.stderr
    final, expected = load_ckpt(run_dir / "last.pt"), load_ckpt(ref / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(final[key], expected[key], key)
    assert metric_history(run_dir) == metric_history(ref)


UNUSED_PLUGIN = """
from torch import nn
from trainkit import MODELS

@MODELS.register("with_unused_layer")
def with_unused_layer(input_shape, num_classes):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            size = input_shape[0] * input_shape[1] * input_shape[2]
            self.used, self.spare = nn.Linear(size, num_classes), nn.Linear(size, num_classes)

        def forward(self, x):
            return self.used(x.flatten(1))

    return Net()
"""


def test_ddp_looks_for_unused_parameters_only_when_there_are_some(tmp_path):
    (tmp_path / "unused_plugin.py").write_text(UNUSED_PLUGIN)
    config = tiny_config(tmp_path, name="unused", imports=["unused_plugin"], data={"n_train": 64, "batch_size": 8})
    config["model"] = {"name": "with_unused_layer"}
    env = subprocess_env() | {"PYTHONPATH": f"{tmp_path}:{subprocess_env().get('PYTHONPATH', '')}"}
    result = _nproc("train", write_config(tmp_path / "unused.yaml", config), env=env)
    assert result.returncode == 0, result.stderr
    assert "DDP: find_unused_parameters is on: parameters without a gradient: spare.weight, spare.bias" in result.stderr
    # freezing the unused layer makes the search unnecessary
    config["model"]["freeze"] = ["spare.*"]
    config["name"] = "frozen"
    result = _nproc("train", write_config(tmp_path / "frozen.yaml", config), env=env)
    assert result.returncode == 0, result.stderr
    assert "find_unused_parameters" not in result.stderr


def test_unfrozen_parameters_are_reduced_across_processes(tmp_path, cli):
    """After the unfreeze, 2 processes still train as 1 process with the whole batch (the
    gradients of the joined parameters are averaged: DDP is rebuilt for them)."""
    configs = {}
    for name, batch in (("one", 32), ("two", 16)):
        config = tiny_config(tmp_path, name=name, data={"n_train": 128, "n_test": 32, "batch_size": batch})
        config["model"]["freeze"] = ["conv1.*"]
        config["trainer"].update(epochs=2, unfreeze_at_epoch=2)
        configs[name] = write_config(tmp_path / f"{name}.yaml", config)
    code, _, err = cli("train", configs["one"], "-q")
    assert code == 0, err
    result = _nproc("train", configs["two"], "-q")
    assert result.returncode == 0, result.stderr
    one, two = load_ckpt(tmp_path / "ckpt" / "one" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "two" / "last.pt")
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], rtol=1e-5, atol=1e-6), key
