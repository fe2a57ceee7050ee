"""Checkpoint files: written so a kill -9 can never leave a half-written one, read safely.

A run folder holds, after each save:
    step-000001200.pt   the newest checkpoint (and `keep_last - 1` older ones)
    last.pt             a hard link to the newest step file
    best.pt             a hard link to the checkpoint with the best validation metric
    latest.json         pointer to the newest complete checkpoint, written last

Every file is written to a temp file in the same folder, flushed, fsynced and renamed
over its target, so each name always points at a complete file; the previous checkpoint
is only pruned after the new one and the pointer are in place. Loading always uses
`torch.load(weights_only=True)`: a file that needs arbitrary pickle is refused.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from trainkit.errors import CheckpointError, CheckpointNotFoundError
from trainkit.fileio import atomic_link, atomic_write, atomic_write_text

FORMAT_VERSION = 1
log = logging.getLogger("trainkit")
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def to_cpu(obj: Any) -> Any:
    """Tensors moved to the CPU, so a checkpoint written on a GPU loads anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    return CheckpointError(f"{path}: truncated, corrupt or not a checkpoint file ({detail})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a trainkit checkpoint with weights_only=True, or say precisely why not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointNotFoundError(f"{path} is a folder; give a checkpoint file (for resume, a run folder works)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler names the global it refused ("... GLOBAL posix.system ...")
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise CheckpointError(f"{path}: refused to load: it holds Python objects beyond tensors and plain "
                                  f"data, which could run code when unpickled ({refused.group(1)}); "
                                  "trainkit only loads with weights_only=True") from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # torch raises many kinds for damaged zip archives and stray files
        raise _unreadable(path, exc) from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a trainkit checkpoint (a bare state_dict or another tool's file?)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format {ckpt['format_version']} by a newer trainkit "
                              f"(this one reads up to format {FORMAT_VERSION}); upgrade trainkit to use it")
    return ckpt


class RunFolder:
    """The files of one run: checkpoints, pointer, config, metrics."""

    def __init__(self, path: str | Path, keep_last: int = 2):
        self.path, self.keep_last = Path(path), keep_last

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def pointer(self) -> Path:
        return self.path / "latest.json"

    def holds_run(self) -> bool:
        return any((self.path / n).exists() for n in ("config.yaml", "last.pt", "latest.json", "metrics.jsonl"))

    def step_files(self) -> list[tuple[int, Path]]:
        found = []
        if self.path.is_dir():
            for p in self.path.iterdir():
                m = _STEP_FILE.match(p.name)
                if m:
                    found.append((int(m.group(1)), p))
        return sorted(found)

    def remove_stale_temps(self) -> None:
        """Temp files of a save that was killed midway; never a complete checkpoint."""
        if self.path.is_dir():
            for p in self.path.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)

    def save(self, ckpt: dict[str, Any], is_best: bool) -> Path:
        target = self.path / f"step-{ckpt['step']:09d}.pt"
        atomic_save(ckpt, target)
        atomic_link(target, self.last)
        if is_best:
            atomic_link(target, self.best)
        pointer = {"checkpoint": target.name, "step": ckpt["step"], "epoch": ckpt["epoch"],
                   "bytes": target.stat().st_size}
        atomic_write_text(self.pointer, json.dumps(pointer) + "\n")
        for _, old in self.step_files()[: -self.keep_last]:
            old.unlink(missing_ok=True)  # the newest keep_last stay; best.pt is its own link
        return target

    def mark_best(self, source: Path) -> None:
        atomic_link(source, self.best)

    def _candidates(self) -> list[Path]:
        """Checkpoints newest first: the pointer's, then step files by step, then last.pt."""
        order: list[Path] = []
        try:
            named = json.loads(self.pointer.read_text()).get("checkpoint")
            if named:
                order.append(self.path / named)
        except (OSError, ValueError, AttributeError):
            pass
        steps = [p for _, p in reversed(self.step_files())]
        if order and steps and steps[0] != order[0]:
            order = steps[:1] + order  # a save finished its file but was killed before the pointer
        order += steps + [self.last]
        unique: list[Path] = []
        for p in order:
            if p.exists() and p not in unique:
                unique.append(p)
        return unique

    def load_latest(self) -> tuple[Path, dict[str, Any], list[Path]]:
        """The newest checkpoint that loads, and the damaged newer ones it skipped."""
        candidates = self._candidates()
        if not candidates:
            raise CheckpointNotFoundError(f"{self.path} holds no checkpoint (no last.pt or step-*.pt); if its run "
                                          "stopped before the first save, start it again with train --overwrite")
        errors, skipped = [], []
        for path in candidates:
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError as exc:
                if "newer trainkit" in str(exc) or "refused to load" in str(exc):
                    raise
                errors.append(str(exc))
                skipped.append(path)
                continue
            for message in errors:
                log.warning("%s; using the previous good checkpoint %s instead", message, path.name)
            return path, ckpt, skipped
        raise CheckpointError(f"no usable checkpoint in {self.path}: " + "; ".join(errors))

    def quarantine(self, paths: list[Path]) -> None:
        """Rename damaged checkpoints to *.corrupt: kept for inspection, out of the rotation."""
        for path in paths:
            if path.exists() and path != self.last:
                os.replace(path, path.with_name(path.name + ".corrupt"))

    def newest_step(self) -> int | None:
        steps = self.step_files()
        return steps[-1][0] if steps else None


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's best.pt (its last.pt when there is no best)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).exists():
            return path / name
    raise CheckpointNotFoundError(f"{path} holds no checkpoint (no best.pt or last.pt)")


def open_for_resume(path: str | Path) -> tuple[Path, dict[str, Any], list[Path]]:
    """A run folder (its newest good checkpoint) or one checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"no such run folder or checkpoint: {path}")
    if path.is_dir():
        return RunFolder(path).load_latest()
    return path, load_checkpoint(path), []
