"""`trainkit export`: a trained model as one file that runs without trainkit.

The exported module includes the input normalisation training applied, so a user feeds
plain float images in [0, 1] of shape (N, C, H, W) (any N) and gets logits (or
regression outputs) back. A table model takes the raw feature values, (N, inputs), with
categorical columns one-hot in the order trainkit.json's `input_columns` names; its
standardisation is inside, and so is the regression target's, so outputs are in the
target's units. Two formats:
- "export" (default): torch.export.export + torch.export.save, loaded with
  `torch.export.load(path).module()`;
- "torchscript": torch.jit.trace + torch.jit.save, loaded with `torch.jit.load(path)`
  (deprecated by PyTorch, kept for runtimes that still need it).

Both files also hold `trainkit.json` (task, input shape, class names, input range, a
table's input columns) as an extra file. After writing, the file is loaded back and checked against the model.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.errors import TrainkitError, UsageError
from trainkit.runfolder.fileio import atomic_write
from trainkit.training.data import DatasetInfo
from trainkit.training.restore import load_trained_model

FORMATS = ("export", "torchscript")
META_FILE = "trainkit.json"


class NormalizedInput(nn.Module):
    """x in [0, 1] -> (x - mean) / std per channel -> the trained model.

    Written as one multiply-add, x * (1/std) + (-mean/std), the form training uses."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / std_t)
        self.register_buffer("shift", -mean_t / std_t)

    scale: torch.Tensor
    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.addcmul(self.shift, x, self.scale))


class StandardizedTable(nn.Module):
    """Raw feature values -> (x - mean) / std -> the trained model -> regression outputs back in
    the target's units (y * std + mean). Strings cannot enter a torch program, so categorical
    columns arrive one-hot, as the input names in trainkit.json spell out ('city=Paris')."""

    def __init__(self, model: nn.Module, info: DatasetInfo):
        super().__init__()
        self.model = model
        assert info.feature_mean is not None and info.feature_std is not None  # deployable() checked
        std = torch.tensor(info.feature_std, dtype=torch.float64)
        self.register_buffer("scale", (1.0 / std).float())
        self.register_buffer("shift", (-torch.tensor(info.feature_mean, dtype=torch.float64) / std).float())
        out_std, out_mean = info.target_std or (1.0,), info.target_mean or (0.0,)
        self.register_buffer("out_scale", torch.tensor(out_std, dtype=torch.float32))
        self.register_buffer("out_shift", torch.tensor(out_mean, dtype=torch.float32))
        self.regression = info.task == "regression" and info.target_std is not None

    scale: torch.Tensor
    shift: torch.Tensor
    out_scale: torch.Tensor
    out_shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(torch.addcmul(self.shift, x, self.scale))
        return torch.addcmul(self.out_shift, out, self.out_scale) if self.regression else out


def deployable(model: nn.Module, info: DatasetInfo) -> tuple[nn.Module, str]:
    """The model with its input normalisation built in, and what its input is."""
    if info.mean is not None and info.std is not None and len(info.input_shape) == 3:
        return NormalizedInput(model, info.mean, info.std).eval(), "float images in [0, 1]"
    if info.feature_mean is not None and info.feature_std is not None:
        out = "; outputs in the target's units" if info.task == "regression" else "; outputs are logits"
        return StandardizedTable(model, info).eval(), (
            "raw feature values in the order of trainkit.json's input_columns (a categorical column as "
            "one-hot inputs 'column=category': 1 for the row's category, else 0; no missing values)" + out
        )
    # No normalisation recorded (e.g. regression features): the model takes what training fed it.
    return model.eval(), "the same values the model saw in training (no normalisation recorded)"


def _metadata(info: DatasetInfo, fmt: str, input_desc: str) -> str:
    return json.dumps(
        {
            "format": fmt,
            "task": info.task,
            "input_shape": [None, *info.input_shape],
            "input": input_desc,
            "num_outputs": info.num_outputs,
            "class_names": info.class_names,
            "input_columns": info.features,
        }
    )


def _capture(module: nn.Module, example: torch.Tensor, fmt: str) -> Any:
    if fmt == "export":
        batch = {0: torch.export.Dim("batch", min=1, max=1 << 20)}
        return torch.export.export(module, (example,), dynamic_shapes=(batch,))
    with warnings.catch_warnings():  # TorchScript's deprecation notice is the user's choice, not news
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.trace(module, example)


def _save(program: Any, path: Path, fmt: str, meta: str) -> None:
    # atomically, so `path` is never half-written; through an open file, not a name, since
    # torch.export warns about any name not ending in .pt2
    def write(f: Any) -> None:
        if fmt == "export":
            torch.export.save(program, f, extra_files={META_FILE: meta})
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(program, f, _extra_files={META_FILE: meta})

    atomic_write(path, write)


def load_exported(path: str | Path, fmt: str) -> Any:
    """The callable a user gets from the file (what the file's readers do without trainkit)."""
    if fmt == "export":
        with open(path, "rb") as f:  # a file, not a name: torch.export warns about names not ending in .pt2
            return torch.export.load(f).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def _is_an_export(path: Path) -> bool:
    """A file an earlier export wrote (a zip archive holding trainkit.json), which a new export may
    replace; anything else at the output path (a config, a checkpoint, a typo's victim) is kept."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == META_FILE for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def export(
    checkpoint: str | Path,
    output: str | Path,
    fmt: str = "export",
    *,
    imports: Sequence[str] = (),
    trust_plugins: bool = False,
) -> dict[str, Any]:
    """Write the checkpoint's model (normalisation included) to `output`; returns a summary."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    output = Path(output)
    if output.is_dir():
        raise UsageError(f"{output} is a folder; give the file to write, e.g. -o model.pt2")
    if not output.parent.is_dir():
        raise UsageError(f"folder does not exist: {output.parent}")
    if os.path.lexists(output) and not _is_an_export(output):
        raise UsageError(
            f"{output} exists and is not a model trainkit exported; export replaces only its own files: "
            "give another -o, or move that file away"
        )
    model, info, cfg, source = load_trained_model(checkpoint, imports=imports, trust_plugins=trust_plugins)
    module, input_desc = deployable(model, info)
    example = torch.rand(2, *info.input_shape)  # batch of 2, so the batch size is not fixed at 1
    try:
        program = _capture(module, example, fmt)
    except Exception as exc:  # unsupported Python or ops in a user's model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        other = "torchscript" if fmt == "export" else "export"
        raise TrainkitError(f"could not {fmt} model '{cfg.model.name}': {first}; try --format {other}") from None
    _save(program, output, fmt, _metadata(info, fmt, input_desc))
    # Read the file back and run it: what is on disk must compute what the model computes.
    check = torch.rand(3, *info.input_shape)
    with torch.inference_mode():
        expected, got = module(check), load_exported(output, fmt)(check)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        diff = (expected - got).abs().max().item()
        raise TrainkitError(f"{output}: the exported model differs from the checkpoint's (max difference {diff:.3g})")
    return {
        "checkpoint": str(source),
        "output": str(output),
        "format": fmt,
        "input": input_desc,
        "input_shape": ["N", *info.input_shape],
        "bytes": output.stat().st_size,
    }
