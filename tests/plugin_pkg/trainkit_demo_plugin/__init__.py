"""A tiny trainkit plugin used by the tests: one model and one data set.

It is found either through a config's `imports: [trainkit_demo_plugin]` (with this
folder's parent on sys.path) or through a `trainkit.plugins` entry point that the
tests declare in a throwaway *.dist-info folder.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from trainkit.registry import DATASETS, MODELS


@MODELS.register("demo_linear")
def demo_linear(input_shape: tuple[int, ...], num_outputs: int, scale: Annotated[float, Field(gt=0)] = 1.0):
    """Flatten, then one linear layer (plugin demo)."""
    import math

    import torch
    from torch import nn

    layer = nn.Linear(math.prod(input_shape), num_outputs)
    with torch.no_grad():
        layer.weight.mul_(scale)
    return nn.Sequential(nn.Flatten(), layer)


@DATASETS.register("demo_blobs")
def demo_blobs(
    seed: int,
    n_train: Annotated[int, Field(gt=0)] = 128,
    n_test: Annotated[int, Field(gt=0)] = 32,
    features: Annotated[int, Field(gt=0)] = 4,
):
    """Two Gaussian blobs in `features` dimensions (plugin demo)."""
    import torch

    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit

    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> TensorSplit:
        labels = torch.randint(0, 2, (n,), generator=gen)
        points = torch.randn(n, features, generator=gen) + 3.0 * labels[:, None].float()
        return TensorSplit(points, labels)

    info = DatasetInfo("classification", (features,), 2, class_names=["left", "right"])
    return DataBundle(info, split(n_train), split(n_test))
