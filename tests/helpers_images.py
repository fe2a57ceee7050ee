"""Image folders the tests write: from seeded synthetic arrays, and from the real MNIST files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import SHARED_DATA

Image = pytest.importorskip("PIL.Image")


def class_images(n: int, label: int, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    """n uint8 images (n, H, W[, 3]) of one class: a seeded template per class plus noise."""
    rng = np.random.default_rng(seed * 1000 + label)
    template = np.random.default_rng(label).integers(0, 256, (size, size, channels))
    pixels = template + rng.normal(0, 25, (n, size, size, channels))
    images = np.clip(pixels, 0, 255).round().astype(np.uint8)
    return images[..., 0] if channels == 1 else images


def save(array: np.ndarray, path: Path, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def write_folder(
    root: Path,
    train: int = 12,
    test: int = 4,
    classes: int = 3,
    size: int = 8,
    channels: int = 1,
    ext: str = ".png",
    layout: str = "split",
    test_folder: str = "test",
    seed: int = 0,
) -> Path:
    """root/train/<class>/, root/<test_folder>/<class>/ (layout 'split') or root/<class>/ ('flat')."""
    for label in range(classes):
        name = f"class_{label}"
        parts = [("train", train), (test_folder, test)] if layout == "split" else [("", train + test)]
        offset = 0
        for split, n in parts:
            for i, image in enumerate(class_images(n + offset, label, size, channels, seed)[offset:]):
                folder = root / split / name if split else root / name
                save(image, folder / f"{offset + i:04d}{ext}")
            offset += n
    return root


def mnist_folder(root: Path, n_train: int, n_test: int) -> Path:
    """The first n_train / n_test real MNIST digits as PNG files in root/{train,test}/<digit>/."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST files under {SHARED_DATA}")
    from trainkit.builtin.datasets import mnist

    bundle = mnist(root=str(SHARED_DATA), download=False)
    for split, data, n in (("train", bundle.train, n_train), ("test", bundle.test, n_test)):
        for i in range(n):
            save(data.inputs[i, 0].numpy(), root / split / str(int(data.targets[i])) / f"{i:05d}.png")
    return root


def image_config(tmp_path: Path, root: Path, **data: Any) -> dict[str, Any]:
    """A tiny CNN on an image folder; the cache in tmp_path (never ~/.cache)."""
    return {
        "name": "images",
        "seed": 0,
        "model": {"name": "cnn", "channels": [4, 8], "hidden": 16},
        "data": {
            "name": "image_folder",
            "root": str(root),
            "batch_size": 8,
            "eval_batch_size": 10,
            "cache_dir": str(tmp_path / "cache"),
            "num_workers": 0,
            **data,
        },
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {"epochs": 2, "log_every": 2, "device": "cpu"},
        "checkpoint": {"dir": str(tmp_path / "ckpt")},
    }
