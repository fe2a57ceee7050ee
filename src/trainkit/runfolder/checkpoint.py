"""The checkpoint format: the one module that defines, writes, reads and migrates it.

A checkpoint file is `torch.save` of `Checkpoint.to_dict()`: plain Python types and CPU
tensors only, so it loads with `torch.load(path, weights_only=True)` and needs no trainkit
to read its weights (`torch.load(p, weights_only=True)["model"]` is a plain state_dict).

Reading goes the other way through `load_checkpoint`: weights_only=True always (a file
that needs arbitrary pickle is refused, never run), then `Checkpoint.from_dict`, which
migrates an older format and checks every field's type, so a damaged or hand-edited file
is one clear CheckpointError instead of a KeyError deep in a resume.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainkit import inputfiles
from trainkit.errors import CheckpointError, CheckpointNotFoundError, NewerCheckpointError, UnsafeCheckpointError
from trainkit.runfolder.fileio import atomic_write

FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly, evaluate, or be rebuilt elsewhere."""

    model: dict[str, Any]  # the unwrapped module's state_dict (no DDP / compile prefixes)
    config: dict[str, Any] | None = None  # the resolved config, defaults filled in
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # GradScaler (fp16 on CUDA)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float | None = None
    is_best: bool = False  # this checkpoint is the run's best so far (best.pt links to it)
    state: dict[str, Any] = field(default_factory=dict)  # the loop's TrainState
    rng: list[Any] = field(default_factory=list)  # one entry per process (rank order)
    rank_losses: list[Any] = field(default_factory=list)  # each process's batch losses of the epoch so far
    world_size: int = 1
    data_info: dict[str, Any] | None = None  # the data set's DatasetInfo, for predict / export
    data_record: dict[str, Any] | None = None  # DataBundle.record: rebuilds the data exactly (split, index)
    metrics_offset: int = 0  # length of metrics.jsonl when saved: resume cuts it back to this
    plugins: list[str] = field(default_factory=list)  # modules outside trainkit the components came from
    trackers: dict[str, Any] = field(default_factory=dict)  # what tracking sinks need to continue (MLflow run id)
    # model.init_from of the run: {"path", "kind", "weights_sha256", "reinitialized", "skipped"}
    started_from: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)  # trainkit, torch, python that wrote it
    saved_at: float = 0.0
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: Any, source: str | Path = "checkpoint") -> Checkpoint:
        """Check and (if older) migrate a loaded dict; a CheckpointError names what is wrong."""
        if not isinstance(raw, dict) or "format_version" not in raw or "model" not in raw:
            raise CheckpointError(f"{source}: not a trainkit checkpoint (a bare state_dict or another tool's file?)")
        version = raw["format_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(f"{source}: not a trainkit checkpoint (format_version is {version!r})")
        if version > FORMAT_VERSION:
            raise NewerCheckpointError(
                f"{source}: written in checkpoint format {version} by a newer trainkit "
                f"(this one reads up to format {FORMAT_VERSION}); upgrade trainkit to use it"
            )
        values = _migrate(dict(raw), version)
        known = {f.name for f in dataclasses.fields(cls)}
        checkpoint = cls(**{k: v for k, v in values.items() if k in known})
        problems = checkpoint._type_problems()
        if problems:
            raise CheckpointError(f"{source}: damaged or not a trainkit checkpoint: {'; '.join(problems[:3])}")
        return checkpoint

    def _type_problems(self) -> list[str]:
        problems = []
        for spec in dataclasses.fields(self):
            expected = _EXPECTED[spec.name]
            value = getattr(self, spec.name)
            if not _is_instance(value, expected):
                problems.append(f"'{spec.name}' is {type(value).__name__}, expected {_describe(expected)}")
        if isinstance(self.model, dict) and not all(isinstance(k, str) for k in self.model):
            problems.append("'model' has keys that are not parameter names")
        if isinstance(self.plugins, (list, tuple)) and not all(isinstance(m, str) for m in self.plugins):
            problems.append("'plugins' has entries that are not module names")
        for name in ("epoch", "step", "metrics_offset"):
            value = getattr(self, name)
            if _is_instance(value, int) and value < 0:
                problems.append(f"'{name}' is negative ({value})")
        if _is_instance(self.world_size, int) and self.world_size < 1:
            problems.append(f"'world_size' is {self.world_size}")
        return problems

    def require(self, *names: str, source: str | Path, purpose: str) -> None:
        """Raise a one-line error if a field that `purpose` needs is absent."""
        missing = [n for n in names if getattr(self, n) in (None, {}, [])]
        if missing:
            raise CheckpointError(f"{source}: cannot {purpose}: the checkpoint has no {', '.join(missing)}")


# Field -> accepted types (None allowed where the field is optional).
_EXPECTED: dict[str, tuple[type, ...]] = {
    "model": (dict,),
    "config": (dict, type(None)),
    "optimizer": (dict, type(None)),
    "scheduler": (dict, type(None)),
    "scaler": (dict, type(None)),
    "epoch": (int,),
    "step": (int,),
    "best_metric": (float, int, type(None)),
    "is_best": (bool,),
    "state": (dict,),
    "rng": (list, tuple),
    "rank_losses": (list, tuple),
    "world_size": (int,),
    "data_info": (dict, type(None)),
    "data_record": (dict, type(None)),
    "metrics_offset": (int,),
    "plugins": (list, tuple),
    "trackers": (dict,),
    "started_from": (dict, type(None)),
    "versions": (dict,),
    "saved_at": (float, int),
    "format_version": (int,),
}


def _is_instance(value: Any, expected: type | tuple[type, ...]) -> bool:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # True is an int to Python, not a step count to us
    return isinstance(value, kinds)


def _describe(kinds: tuple[type, ...]) -> str:
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def _migrate(values: dict[str, Any], version: int) -> dict[str, Any]:
    """The one place that brings an older format up to FORMAT_VERSION.

    Each format adds a step here, so every reader of a checkpoint sees the current fields only.
    """
    if version < 2:  # format 2 added the data set's record (format-1 data sets had none) and trackers' state
        values.setdefault("data_record", None)
        values.setdefault("rank_losses", [])  # and each rank's epoch losses (before: rank 0's in `state`)
        values.setdefault("trackers", {})
        values.setdefault("started_from", None)  # and where a fine-tuned run started from
    values["format_version"] = FORMAT_VERSION
    return values


def to_cpu(obj: Any) -> Any:
    """Tensors moved to the CPU, so a checkpoint written on a GPU loads anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file beside `path`, fsynced, then renamed over it."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    atomic_save(checkpoint.to_dict(), path)


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    return CheckpointError(f"{path}: truncated, corrupt or not a checkpoint file ({detail})")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a trainkit checkpoint with weights_only=True, or say precisely why not."""
    path = Path(path)
    try:
        file = inputfiles.open_regular(path)  # never blocks: a named pipe or /dev/zero is refused first
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"checkpoint not found: {path}") from None
    except inputfiles.NotAFile as exc:
        hint = " (for resume, a run folder works)" if exc.kind == "a folder" else ""
        raise CheckpointNotFoundError(f"{path} {exc.strerror}; give a checkpoint file{hint}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {inputfiles.describe(exc)}") from None
    try:
        with file:
            raw = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler names the global it refused ("... GLOBAL posix.system ...")
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it holds Python objects beyond tensors and plain "
                f"data, which could run code when unpickled ({refused.group(1)}); "
                "trainkit only loads with weights_only=True"
            ) from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # torch raises many kinds for damaged zip archives and stray files
        raise _unreadable(path, exc) from None
    return Checkpoint.from_dict(raw, path)
