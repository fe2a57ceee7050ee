"""`trainkit predict`: classify image files with a trained checkpoint.

The checkpoint carries everything needed: the resolved config (to rebuild the model) and
the data set's DatasetInfo (channels, size, class names, normalisation). An image is
converted to the data set's channels and size by image_folder's decoder (torchvision.io,
EXIF orientation applied), then put through the same `Batches` code
that fed training, so the model sees it exactly as it saw its training images: uint8
pixels scaled by 1/255 and normalised by the data set's per-channel mean and std.

Polarity: MNIST digits are light on a dark background, a photo of a handwritten digit is
dark on light. When an image's border is light where the training images' border was dark
(or the other way round: DatasetInfo.border, measured when the data set was built), the
image is inverted before it is classified and the output says so; `--invert` and
`--no-invert` decide it instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainkit import inputfiles
from trainkit.errors import UsageError, one_line
from trainkit.training.batches import Batches
from trainkit.training.data import DatasetInfo, TensorSplit, border_mean
from trainkit.training.restore import load_trained

CPU = torch.device("cpu")


def read_image(path: str | Path, shape: tuple[int, ...], invert: bool = False) -> torch.Tensor:
    """A PNG/JPEG/... file as a uint8 (C, H, W) tensor in the data set's channels and size,
    decoded and resized by the very code that read an image folder's files for training."""
    from trainkit.builtin.image_decode import ImageFileError, decode_bytes

    channels, height, width = shape
    if channels not in (1, 3):
        raise UsageError(f"the model takes {channels}-channel images; predict reads 1 (grey) or 3 (RGB) channels")
    try:
        with inputfiles.open_regular(path) as file:  # a named pipe would block open()
            data = file.read()
    except FileNotFoundError:
        raise UsageError(f"image not found: {path}") from None
    except inputfiles.NotAFile as exc:
        raise UsageError(f"{path} {exc.strerror}; give an image file") from None
    except OSError as exc:
        raise UsageError(f"cannot read image {path}: {inputfiles.describe(exc)}") from None
    if not data:
        raise UsageError(f"cannot read image {path}: empty file (0 bytes)")
    try:
        pixels = decode_bytes(data, path, channels, (height, width))  # other sizes are resized whole (no cropping)
    except ImageFileError as exc:
        raise UsageError(f"cannot read image {path}: {exc.reason}") from None
    return 255 - pixels if invert else pixels


def opposite_background(pixels: torch.Tensor, info: DatasetInfo) -> bool:
    """Whether an image's border is light where the training images' is dark, or dark where it
    is light (far from it, and close to it once inverted)."""
    if info.border is None:
        return False
    border = border_mean(pixels)
    return abs(border - info.border) > 0.5 and abs((1 - border) - info.border) < 0.25


def model_inputs(pixels: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the float batch the model saw in training, by training's own code."""
    split = TensorSplit(pixels, torch.zeros(len(pixels), dtype=torch.int64))
    x, _ = next(Batches(split, info, len(pixels), CPU, train=False)())
    return x


def predict(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    top_k: int = 3,
    invert: bool | None = None,
    *,
    imports: Sequence[str] = (),
    trust_plugins: bool = False,
) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image, in the order given; for a model trained
    on a table, `images` are CSV or Parquet files and each of their rows gets its prediction
    (see predict_table.py).

    `invert`: True or False inverts every image or none; None (the default) inverts an image
    whose background is the opposite of the training images' (each result says `inverted`)."""
    if not images:
        raise UsageError("give at least one image file (or, for a model trained on a table, a CSV or Parquet file)")
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    trained = load_trained(checkpoint, imports=imports, trust_plugins=trust_plugins)
    model, info, source = trained.model, trained.info, trained.source
    if isinstance(trained.data_record, dict) and "plan" in trained.data_record:  # a table's encoding plan
        from trainkit.tools.predict_table import predict_rows

        return predict_rows(trained, images, top_k)
    if info.task != "classification" or not info.num_classes:
        raise UsageError(f"{source} is a {info.task} model; predict classifies images")
    if len(info.input_shape) != 3:
        raise UsageError(f"{source} takes inputs of shape {info.input_shape}, not images (channels, height, width)")
    read = [read_image(path, info.input_shape) for path in images]
    flips = [opposite_background(p, info) if invert is None else invert for p in read]
    pixels = torch.stack([255 - p if flip else p for p, flip in zip(read, flips, strict=True)])
    with torch.inference_mode():
        probabilities = torch.softmax(model(model_inputs(pixels, info)).float(), dim=1)
    k = min(top_k, info.num_classes)
    top = probabilities.topk(k, dim=1)
    names = info.class_names or [str(i) for i in range(info.num_classes)]
    return [
        {
            "image": str(path),
            "inverted": flip,
            "auto_inverted": flip and invert is None,
            "predictions": [
                {"class": names[i], "index": i, "probability": p}
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            ],
        }
        for path, flip, values, indices in zip(images, flips, top.values, top.indices, strict=True)
    ]


def format_predictions(results: list[dict[str, Any]]) -> str:
    """One line per image: 'digit.png: 7 98.2%, 1 1.1%, 9 0.3%', saying when it was inverted
    (or per table row: see predict_table.format_rows)."""
    if results and "row" in results[0]:
        from trainkit.tools.predict_table import format_rows

        return format_rows(results)
    return "\n".join(f"{one_line(r['image'])}{_inverted_note(r)}: {format_classes(r)}" for r in results)


def format_classes(result: dict[str, Any]) -> str:
    """'7 98.2%, 1 1.1%'. A class name is a folder name or a table's value, so it may hold a
    newline or a terminal escape: escaped here, so that a line stays one line (--json keeps
    the names as they are)."""
    return ", ".join(f"{one_line(p['class'])} {100 * p['probability']:.1f}%" for p in result["predictions"])


def _inverted_note(result: dict[str, Any]) -> str:
    if result.get("auto_inverted"):
        return " (inverted: its background is the opposite of the training images'; --no-invert to keep it)"
    return " (inverted)" if result.get("inverted") else ""
