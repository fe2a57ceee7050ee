"""Training on the real MNIST and Fashion-MNIST files in ../shared/data (skipped elsewhere).

A few hundred steps of the classic CNN must reach a test accuracy that only real learning
on correctly read data gives (a reader that scrambled images or labels would sit at 10%).
"""

from __future__ import annotations

import pytest

import trainkit
from conftest import SHARED_DATA

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no ../shared/data"),
]


@pytest.mark.parametrize("dataset,steps,threshold", [("mnist", 300, 0.95), ("fashion_mnist", 300, 0.80)])
def test_a_few_hundred_steps_learn_the_real_data(tmp_path, dataset, steps, threshold):
    config = {
        "name": dataset,
        "model": {"name": "cnn"},
        "data": {
            "name": dataset,
            "root": str(SHARED_DATA),
            "download": False,
            "batch_size": 64,
            "eval_batch_size": 500,
        },
        "optimizer": {"name": "adam", "lr": 0.002},
        "trainer": {"epochs": 1, "limit_batches": steps, "log_every": 100},
        "checkpoint": {"dir": str(tmp_path)},
    }
    result = trainkit.train(config, quiet=True)
    assert result["step"] == steps
    assert result["final"]["val_accuracy"] > threshold, result["final"]
    metrics = trainkit.evaluate(tmp_path / dataset / "best.pt")
    assert metrics["samples"] == 10000 and metrics["accuracy"] == result["final"]["val_accuracy"]
