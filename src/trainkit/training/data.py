"""What a data set builder returns: the splits and what the loop needs to know about them.

These are the contract between a data set (built-in or a user's plugin) and the loop,
exported as `trainkit.DataBundle`, `trainkit.DatasetInfo` and `trainkit.TensorSplit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

Task = Literal["classification", "regression"]


@dataclass
class DatasetInfo:
    task: Task
    input_shape: tuple[int, ...]
    num_classes: int | None = None  # classification only
    num_outputs: int = 1  # logits per sample (= num_classes) or regression targets
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None  # per channel, of uint8 pixels scaled to [0, 1]
    std: tuple[float, ...] | None = None
    # Tables: each input's name (a column, or 'column=category' for a one-hot input) and how the
    # data set standardised it from the raw value, input = (raw - feature_mean) / feature_std.
    features: list[str] | None = None
    feature_mean: tuple[float, ...] | None = None
    feature_std: tuple[float, ...] | None = None
    # Regression targets standardised by the data set: the model predicts (y - target_mean) /
    # target_std, and evaluation reports mse, mae and r2 in the target's own units.
    target_mean: tuple[float, ...] | None = None
    target_std: tuple[float, ...] | None = None
    # mean of the images' one-pixel border, scaled to [0, 1] (MNIST: about 0, dark): lets
    # `trainkit predict` notice a photo whose background is the other way round
    border: float | None = None

    def __post_init__(self) -> None:
        if self.task == "classification" and self.num_classes:
            self.num_outputs = self.num_classes


@dataclass
class TensorSplit:
    """A whole split in memory: inputs (uint8 images or float features) and targets."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device) -> TensorSplit:
        return TensorSplit(self.inputs.to(device), self.targets.to(device))


def border_mean(images: torch.Tensor) -> float:
    """Mean of the one-pixel frame of uint8 images (..., H, W), in [0, 1]."""
    frame = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1)
    return frame.float().mean().item() / 255


@dataclass
class DataBundle:
    """What a dataset builder returns: train and test splits plus what the loop needs to know."""

    info: DatasetInfo
    train: TensorSplit | torch.utils.data.Dataset
    test: TensorSplit | torch.utils.data.Dataset
    # What the data set needs to be rebuilt exactly as it was (a split drawn from a folder, the
    # file index, statistics computed from the training rows): plain data and tensors, saved in
    # every checkpoint and handed back to the builder as its `record` input on resume and eval.
    record: dict[str, Any] | None = None

    @classmethod
    def from_datasets(
        cls,
        train: torch.utils.data.Dataset,
        test: torch.utils.data.Dataset,
        *,
        task: Task = "classification",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> DataBundle:
        """Wrap any map-style torch Dataset yielding (input tensor, target).

        trainkit reads them in `data.num_workers` DataLoader processes, a whole batch per
        task, in the seeded epoch order. Random transforms stay exact across workers and
        resumes: before each `dataset[i]`, torch's, numpy's and Python's global generators
        are seeded from (seed, epoch, i) (`trainkit.training.loader.current_sample()` says
        which), so draw from them, or seed your own generator with `torch.initial_seed()`."""
        from trainkit.training.loader import sample_input

        shape = tuple(sample_input(train[0], 0).shape)
        return cls(DatasetInfo(task, shape, num_classes, class_names=class_names), train, test)
