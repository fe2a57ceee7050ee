"""Built-in model builders.

Each builder receives the data set's `input_shape` and `num_classes` / `num_outputs`
from trainkit, and its own options from the YAML. torch is imported inside the builders
so that listing and validating configs stays fast.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from trainkit.errors import ConfigError
from trainkit.registry import MODELS

Positive = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, lt=1)]


def _image_shape(model: str, input_shape: tuple[int, ...], min_size: int) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape[1:]) < min_size:
        raise ConfigError(
            f"model.name: model '{model}' needs image inputs (channels, height, width) of at least "
            f"{min_size}x{min_size} pixels; the data set gives shape {tuple(input_shape)}"
        )
    return tuple(input_shape)  # type: ignore[return-value]


def _classes(model: str, num_classes: int | None) -> int:
    if num_classes is None:
        raise ConfigError(f"model.name: model '{model}' is a classifier; the data set is a regression task")
    return num_classes


@MODELS.register("linear_regression")
def linear_regression(input_shape: tuple[int, ...], num_outputs: int, bias: bool = True):
    """One nn.Linear, y = w.x + b: the classic PyTorch linear-regression example."""
    from torch import nn

    from trainkit.builtin.nets import flat_size

    linear = nn.Linear(flat_size(input_shape), num_outputs, bias=bias)
    return linear if len(input_shape) == 1 else nn.Sequential(nn.Flatten(), linear)


@MODELS.register("mlp")
def mlp(
    input_shape: tuple[int, ...],
    num_outputs: int,
    hidden: list[Positive] = [256, 128],
    dropout: Probability = 0.0,
):
    """Flatten, then fully connected layers of the given widths with ReLU."""
    from trainkit.builtin.nets import MLP, flat_size

    return MLP(flat_size(input_shape), num_outputs, list(hidden), dropout)


@MODELS.register("cnn")
def cnn(
    input_shape: tuple[int, ...],
    num_classes: int | None,
    channels: Annotated[list[Positive], Field(min_length=2, max_length=2)] = [32, 64],
    hidden: Positive = 128,
    dropout: Probability = 0.0,
):
    """The classic MNIST CNN (conv32-conv64-fc128), sized from the data set."""
    from trainkit.builtin.nets import ClassicCNN

    c, h, w = _image_shape("cnn", input_shape, 4)
    return ClassicCNN(c, h, w, _classes("cnn", num_classes), (channels[0], channels[1]), hidden, dropout)


@MODELS.register("fast_cnn")
def fast_cnn(
    input_shape: tuple[int, ...],
    num_classes: int | None,
    widths: Annotated[list[Positive], Field(min_length=1)] = [32, 64, 128],
    convs_per_block: Positive = 1,
    logit_scale: Annotated[float, Field(gt=0)] = 0.125,
):
    """Conv-BN-ReLU blocks with max-pooling, for the fast time-to-accuracy recipes."""
    from trainkit.builtin.nets import FastCNN

    c, h, w = _image_shape("fast_cnn", input_shape, 2 ** len(widths))
    return FastCNN(c, _classes("fast_cnn", num_classes), list(widths), convs_per_block, logit_scale)
