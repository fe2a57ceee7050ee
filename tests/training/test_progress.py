"""What a person watching a run sees: a bar while the validation set is evaluated (on a
terminal), and the start line before the first step."""

from __future__ import annotations

import io

import torch

from conftest import tiny_config
from trainkit.builtin.datasets import synthetic_images
from trainkit.config import resolve
from trainkit.training import progress
from trainkit.training.batches import Batches
from trainkit.training.distributed import DistContext
from trainkit.training.loop import evaluate
from trainkit.training.startline import effective_batch, start_line


class _Bar:
    def __init__(self):
        self.updates, self.closed = 0, False

    def update(self, n):
        self.updates += n

    def close(self):
        self.closed = True


def test_evaluation_advances_a_bar_once_per_batch():
    bundle = synthetic_images(seed=0, n_train=8, n_test=50, size=8, num_classes=4)
    batches = Batches(bundle.test, bundle.info, 20, torch.device("cpu"), train=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    bar = _Bar()
    metrics = evaluate(model, batches, "classification", torch.device("cpu"), bar=bar)
    assert metrics["samples"] == 50 and bar.updates == len(batches) == 3 and bar.closed


def test_the_reporter_shows_an_evaluation_bar_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    stream = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", stream)
    bar = progress.Reporter().eval_progress(3)
    assert bar is not None and bar.total == 3 and bar.desc == "validating"
    bar.close()
    assert progress.Reporter(quiet=True).eval_progress(3) is None
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    assert progress.Reporter().eval_progress(3) is None


def test_the_start_line_says_device_sizes_and_effective_batch(tmp_path):
    cfg = resolve(tiny_config(tmp_path, trainer={"accumulate_grad_batches": 2}))
    bundle = synthetic_images(seed=0, n_train=96, n_test=40, size=8, num_classes=4)
    model = torch.nn.Linear(1000, 1000)
    line = start_line(cfg, torch.device("cpu"), model, bundle, DistContext())
    assert line.startswith(
        "training tiny on cpu: cnn (1M parameters), synthetic_images (96 train / 40 test), "
        "batch 16 x 2 accumulated = effective batch 32, 2 epochs"
    )
    two = DistContext(rank=0, world_size=2)
    assert effective_batch(resolve(tiny_config(tmp_path)), two) == "2 processes x batch 16 = effective batch 32"
