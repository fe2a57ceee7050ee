"""Sweep test helpers: a base config and sweep file written by the test, the trainkit command in
a subprocess, a plugin whose steps take a set time (to kill a trial mid-run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from conftest import TRAINKIT, subprocess_env, tiny_config, write_config

SLOW_PLUGIN = """
import time
from torch import nn
from trainkit import MODELS


class Slow(nn.Module):
    def __init__(self, input_shape, num_classes, delay):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
        self.delay = delay

    def forward(self, x):
        if self.training:
            time.sleep(self.delay)  # a step that takes a while: time to kill the trial mid-run
        return self.net(x)


@MODELS.register("slow_linear")
def slow_linear(input_shape, num_classes, delay: float = 0.1):
    return Slow(input_shape, num_classes, delay)
"""


def write_sweep(folder: Path, base: dict[str, Any] | None = None, **spec: Any) -> Path:
    """base.yaml (the tiny config, checkpoints under folder/ckpt) and sweep.yaml beside it."""
    write_config(folder / "base.yaml", base or tiny_config(folder))
    document = {"name": "search", "config": "base.yaml", **spec}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def slow_base(folder: Path, delay: float = 0.15, **sections: Any) -> dict[str, Any]:
    """A config whose steps sleep `delay` s (plugin slowmods.py written into `folder`, the working folder)."""
    (folder / "slowmods.py").write_text(SLOW_PLUGIN)
    config = tiny_config(folder, **sections)
    config["imports"] = ["slowmods"]
    config["model"] = {"name": "slow_linear", "delay": delay}
    return config


def trainkit(*args: Any, cwd: Path, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*TRAINKIT, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=subprocess_env(), **kwargs
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def start_trainkit(*args: Any, cwd: Path) -> subprocess.Popen:
    """In a session of its own, so the test can kill -9 it together with its trial processes."""
    return subprocess.Popen(
        [*TRAINKIT, *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )


def summary_of(result: subprocess.CompletedProcess) -> dict[str, Any]:
    return json.loads(result.stdout)
