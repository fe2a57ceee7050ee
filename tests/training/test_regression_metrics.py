"""Regression metrics: mse, mae and r2 in the target's own units, whatever the data set
standardised inside; the loss stays the objective the model was trained on."""

from __future__ import annotations

import pytest
import torch

from trainkit.training.batches import Batches
from trainkit.training.data import DatasetInfo, TensorSplit
from trainkit.training.loop import evaluate

CPU = torch.device("cpu")


class Fixed(torch.nn.Module):
    """Returns the predictions stored for each input row (the input is a row index)."""

    def __init__(self, predictions: torch.Tensor):
        super().__init__()
        self.predictions = predictions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions[x[:, 0].long()]


def _metrics(predictions, targets, target_std=None, batch_size=3):
    n = len(targets)
    info = DatasetInfo("regression", (1,), num_outputs=targets.shape[1], target_std=target_std)
    split = TensorSplit(torch.arange(n, dtype=torch.float32).view(-1, 1), targets)
    return evaluate(Fixed(predictions), Batches(split, info, batch_size, CPU, train=False), "regression", CPU)


def test_metrics_in_the_targets_units_and_r2():
    y = torch.tensor([[1.0], [2.0], [4.0], [3.0], [0.5], [-1.0], [2.5]])
    p = y + torch.tensor([[0.5], [-0.25], [0.0], [1.0], [-0.5], [0.25], [0.0]])
    plain = _metrics(p, y)
    error = (p - y).double()
    assert plain["samples"] == 7
    assert plain["mse"] == plain["loss"] == pytest.approx(error.square().mean().item(), rel=1e-12)
    assert plain["mae"] == pytest.approx(error.abs().mean().item(), rel=1e-12)
    r2 = 1 - error.square().sum() / (y.double() - y.double().mean()).square().sum()
    assert plain["r2"] == pytest.approx(r2.item(), rel=1e-12)

    # The same predictions for targets standardised by a std of 10: the loss is the model's own
    # (standardised) MSE, mse and mae come back in the target's units, r2 does not change.
    scaled = _metrics(p / 10, y / 10, target_std=(10.0,))
    assert scaled["loss"] == pytest.approx(plain["mse"] / 100, rel=1e-6)
    assert scaled["mse"] == pytest.approx(plain["mse"], rel=1e-6)
    assert scaled["mae"] == pytest.approx(plain["mae"], rel=1e-6)
    assert scaled["r2"] == pytest.approx(plain["r2"], rel=1e-6)


def test_r2_of_several_outputs_is_their_mean_and_constant_targets_follow_scikit_learn():
    y = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    exact_first = y.clone()
    exact_first[:, 1] += 1.0  # second output: constant target, predictions off by one
    metrics = _metrics(exact_first, y, target_std=(2.0, 3.0))
    assert metrics["r2"] == pytest.approx((1.0 + 0.0) / 2)  # a constant target's r2 is 1 if exact, else 0
    assert metrics["mse"] == pytest.approx((0 + 9.0 * 4) / 8)  # the second output's errors of 1 are 3 in units
    assert _metrics(y, y)["r2"] == 1.0


def test_a_target_far_from_zero_keeps_its_r2():
    """Sums of squares in float64: a target of 1e6 +- 1 does not lose its variance to rounding."""
    base = torch.linspace(-1, 1, 200, dtype=torch.float64).view(-1, 1)
    y = (1e6 + base).float()
    assert _metrics(y, y, batch_size=16)["r2"] == 1.0
    noisy = _metrics(y + 0.0625, y, batch_size=16)
    variance = (y.double() - y.double().mean()).square().mean().item()
    assert noisy["r2"] == pytest.approx(1 - 0.0625**2 / variance, rel=1e-3)
