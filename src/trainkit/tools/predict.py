"""`trainkit predict`: classify image files with a trained checkpoint.

The checkpoint carries everything needed: the resolved config (to rebuild the model) and
the data set's DatasetInfo (channels, size, class names, normalisation). An image is
converted to the data set's channels and size by image_folder's decoder (torchvision.io,
EXIF orientation applied), then put through the same `Batches` code that fed training, so
the model sees it exactly as it saw its training images: uint8 pixels scaled by 1/255 and
normalised by the data set's per-channel mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainkit.errors import UsageError
from trainkit.training.batches import Batches
from trainkit.training.data import DatasetInfo, TensorSplit
from trainkit.training.restore import load_trained_model

CPU = torch.device("cpu")


def read_image(path: str | Path, shape: tuple[int, ...], invert: bool = False) -> torch.Tensor:
    """A PNG/JPEG/... file as a uint8 (C, H, W) tensor in the data set's channels and size,
    decoded and resized by the very code that read an image folder's files for training."""
    from trainkit.builtin.image_decode import ImageFileError, decode_file

    channels, height, width = shape
    if channels not in (1, 3):
        raise UsageError(f"the model takes {channels}-channel images; predict reads 1 (grey) or 3 (RGB) channels")
    if not Path(path).is_file():
        raise UsageError(f"image not found: {path}")
    try:
        pixels = decode_file(path, channels, (height, width))  # other sizes are resized whole (no cropping)
    except ImageFileError as exc:
        raise UsageError(f"cannot read image {path}: {exc.reason}") from None
    return 255 - pixels if invert else pixels


def model_inputs(pixels: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the float batch the model saw in training, by training's own code."""
    split = TensorSplit(pixels, torch.zeros(len(pixels), dtype=torch.int64))
    x, _ = next(Batches(split, info, len(pixels), CPU, train=False)())
    return x


def predict(
    checkpoint: str | Path, images: Sequence[str | Path], top_k: int = 3, invert: bool = False
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image, in the order given."""
    if not images:
        raise UsageError("give at least one image file")
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    model, info, _, source = load_trained_model(checkpoint)
    if info.task != "classification" or not info.num_classes:
        raise UsageError(f"{source} is a {info.task} model; predict classifies images")
    if len(info.input_shape) != 3:
        raise UsageError(f"{source} takes inputs of shape {info.input_shape}, not images (channels, height, width)")
    pixels = torch.stack([read_image(path, info.input_shape, invert) for path in images])
    with torch.inference_mode():
        probabilities = torch.softmax(model(model_inputs(pixels, info)).float(), dim=1)
    k = min(top_k, info.num_classes)
    top = probabilities.topk(k, dim=1)
    names = info.class_names or [str(i) for i in range(info.num_classes)]
    return [
        {
            "image": str(path),
            "predictions": [
                {"class": names[i], "index": i, "probability": p}
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            ],
        }
        for path, values, indices in zip(images, top.values, top.indices, strict=True)
    ]


def format_predictions(results: list[dict[str, Any]]) -> str:
    """One line per image: 'digit.png: 7 98.2%, 1 1.1%, 9 0.3%'."""
    return "\n".join(
        f"{r['image']}: " + ", ".join(f"{p['class']} {100 * p['probability']:.1f}%" for p in r["predictions"])
        for r in results
    )
