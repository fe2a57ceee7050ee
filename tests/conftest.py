"""Shared fixtures: tiny data files and configs that the tests write themselves."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An IDX file (the MNIST format) of a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist_root(
    root: Path, folder: str = "MNIST", n_train: int = 64, n_test: int = 32, compress: bool = True, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), compress)
    return root


def make_cifar_root(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """CIFAR-10 python batches in the original format (pickled dicts with bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
            b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def tiny_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A config that trains in about a second: synthetic 16x16 images, the classic CNN."""
    config: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "cnn", "channels": [4, 8], "hidden": 16},
        "data": {
            "name": "synthetic_images",
            "n_train": 96,
            "n_test": 40,
            "size": 8,
            "num_classes": 4,
            "batch_size": 16,
            "eval_batch_size": 20,
        },
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {"epochs": 2, "log_every": 2, "device": "cpu"},
        "checkpoint": {"dir": str(tmp_path / "ckpt")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class CodePayload:
    """Pickles as a call to os.system that would create `marker`: proof a loader ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    """Every tensor (and plain value) equal, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def metric_history(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields (the only ones allowed to differ)."""
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time",)} for line in lines]


@pytest.fixture
def isolated_registries(monkeypatch):
    """Registries restored after the test, so a plugin's components do not leak into others."""
    from helpers_ecosystem import forget_plugin
    from trainkit import plugins
    from trainkit.registry import REGISTRIES

    for registry in REGISTRIES.values():
        registry.names()  # built-ins (and installed plugins) in before the snapshot
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(plugins, "_entry_points_loaded", plugins._entry_points_loaded)
    monkeypatch.setattr(plugins, "_entry_point_modules", set(plugins._entry_point_modules))
    forget_plugin()
    yield
    forget_plugin()


@pytest.fixture
def demo_plugin_on_path(isolated_registries, monkeypatch):
    """The demo plugin importable by name (as if installed without entry points)."""
    from helpers_ecosystem import PLUGIN_PKG

    monkeypatch.syspath_prepend(str(PLUGIN_PKG))
    return PLUGIN_PKG


@pytest.fixture
def cli():
    """Invoke the CLI in-process; returns (exit_code, stdout, stderr)."""
    from trainkit.cli import app

    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        result = runner.invoke(app, [str(a) for a in args], env=env)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


TRAINKIT = [sys.executable, "-m", "trainkit"]
