"""Shared helpers of the ecosystem tests (schema, runs, plot, predict, export, plugins, ...)."""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path
from typing import Any

from conftest import tiny_config

PLUGIN_PKG = Path(__file__).resolve().parent / "plugin_pkg"
PLUGIN = "trainkit_demo_plugin"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def train_tiny(tmp_path: Path, overrides: list[str] | tuple[str, ...] = (), **sections: Any) -> dict[str, Any]:
    """Train the conftest's tiny config in-process; returns trainkit.train's result."""
    import trainkit

    return trainkit.train(tiny_config(tmp_path, **sections), list(overrides), quiet=True)


def regression_config(tmp_path: Path, name: str = "line") -> dict[str, Any]:
    """The tiny config as a regression run (y = 2x): linear model, synthetic_regression data."""
    config = tiny_config(tmp_path, name=name)
    config["model"] = {"name": "linear_regression"}
    config["data"] = {"name": "synthetic_regression", "n_train": 64, "n_test": 16, "batch_size": 16}
    config["optimizer"] = {"name": "sgd", "lr": 0.05}
    return config


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header, after checking that it is one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path}: the first chunk is not IHDR"
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path}: no IEND chunk (truncated?)"
    return struct.unpack(">II", data[16:24])


def forget_plugin() -> None:
    for name in list(sys.modules):
        if name == PLUGIN or name.startswith(PLUGIN + "."):
            del sys.modules[name]


def write_entry_point_dist(folder: Path, value: str = PLUGIN, name: str = "demo") -> Path:
    """A *.dist-info folder declaring a `trainkit.plugins` entry point, as pip would install it."""
    dist = folder / "trainkit_demo_plugin-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: trainkit-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[trainkit.plugins]\n{name} = {value}\n")
    return folder


def plugin_config(tmp_path: Path, imports: bool = True) -> dict[str, Any]:
    """A config using only the demo plugin's model and data set."""
    config = tiny_config(tmp_path)
    config["model"] = {"name": "demo_linear"}
    config["data"] = {"name": "demo_blobs", "n_train": 64, "n_test": 32, "batch_size": 16}
    config["name"] = "plugged"
    if imports:
        config["imports"] = [PLUGIN]
    return config
