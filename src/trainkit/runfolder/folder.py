"""A run folder's checkpoints: saved so a kill -9 never leaves a half-written one, found again.

After each save the folder holds the newest `keep_last` step files, `last.pt` and
`best.pt` as hard links to step files, and `latest.json` naming the newest complete
checkpoint, written last. Every file is written to a temp file in the same folder,
fsynced and renamed over its target, so each name always points at a complete file; the
previous checkpoint is pruned only after the new one and the pointer are in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from trainkit import inputfiles
from trainkit.errors import CheckpointError, CheckpointNotFoundError, NewerCheckpointError, UnsafeCheckpointError
from trainkit.runfolder import layout
from trainkit.runfolder.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trainkit.runfolder.fileio import atomic_link, atomic_write_text

log = logging.getLogger("trainkit")


class RunFolder:
    """The files of one run: checkpoints, pointer, config, metrics."""

    def __init__(self, path: str | Path, keep_last: int = 2):
        self.path, self.keep_last = Path(path), keep_last

    @property
    def last(self) -> Path:
        return self.path / layout.LAST

    @property
    def best(self) -> Path:
        return self.path / layout.BEST

    @property
    def pointer(self) -> Path:
        return self.path / layout.LATEST

    @property
    def config(self) -> Path:
        return self.path / layout.CONFIG

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in layout.RUN_MARKERS)

    def step_files(self) -> list[tuple[int, Path]]:
        found = []
        if self.path.is_dir():
            for p in self.path.iterdir():
                m = layout.STEP_FILE.match(p.name)
                if m:
                    found.append((int(m.group(1)), p))
        return sorted(found)

    def remove_stale_temps(self) -> None:
        """Temp files of a save that was killed midway; never a complete checkpoint."""
        if self.path.is_dir():
            for p in self.path.glob(layout.TEMP_GLOB):
                p.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove a previous run's files (train --overwrite); other files are left alone."""
        for name in layout.RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for _, path in self.step_files():
            path.unlink()
        shutil.rmtree(self.path / layout.TENSORBOARD, ignore_errors=True)
        shutil.rmtree(self.path / layout.MLFLOW_STAGING, ignore_errors=True)

    def save(self, checkpoint: Checkpoint, is_best: bool) -> Path:
        target = self.path / layout.step_file(checkpoint.step)
        save_checkpoint(checkpoint, target)
        atomic_link(target, self.last)
        if is_best:
            atomic_link(target, self.best)
        pointer = {
            "checkpoint": target.name,
            "step": checkpoint.step,
            "epoch": checkpoint.epoch,
            "bytes": target.stat().st_size,
        }
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
            named = json.loads(inputfiles.read_capped(self.pointer, 1 << 16)).get("checkpoint")
            if isinstance(named, str) and layout.STEP_FILE.match(named):
                order.append(self.path / named)
        except (OSError, ValueError, AttributeError):
            pass  # no pointer, or a damaged one: the step files tell the same story
        steps = [p for _, p in reversed(self.step_files())]
        if order and steps and steps[0] != order[0]:
            order = steps[:1] + order  # a save finished its file but was killed before the pointer
        order += steps + [self.last]
        unique: list[Path] = []
        for p in order:
            if p.exists() and p not in unique:  # a folder or a pipe named *.pt is refused when loaded
                unique.append(p)
        return unique

    def load_latest(self) -> tuple[Path, Checkpoint, list[Path]]:
        """The newest checkpoint that loads, and the damaged newer ones it skipped."""
        candidates = self._candidates()
        if not candidates:
            raise CheckpointNotFoundError(
                f"{self.path} holds no checkpoint (no last.pt or step-*.pt); if its run "
                "stopped before the first save, start it again with train --overwrite"
            )
        errors, skipped = [], []
        for path in candidates:
            try:
                checkpoint = load_checkpoint(path)
            except (NewerCheckpointError, UnsafeCheckpointError):
                raise  # not damage: falling back to an older file would hide the real problem
            except CheckpointError as exc:
                errors.append(str(exc))
                skipped.append(path)
                continue
            for message in errors:
                log.warning("%s; using the previous good checkpoint %s instead", message, path.name)
            return path, checkpoint, skipped
        raise CheckpointError(f"no usable checkpoint in {self.path}: " + "; ".join(errors))

    def quarantine(self, paths: list[Path]) -> None:
        """Rename damaged checkpoints to *.corrupt: kept for inspection, out of the rotation."""
        for path in paths:
            if path.exists() and path != self.last:
                os.replace(path, path.with_name(path.name + layout.CORRUPT_SUFFIX))

    def newest_step(self) -> int | None:
        steps = self.step_files()
        return steps[-1][0] if steps else None


def check_writable_folder(path: Path) -> None:
    """A CheckpointError if the run folder `path` cannot be created or written to: checked
    before a run starts, so a bad checkpoint.dir fails at once, not after the first epoch."""
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise CheckpointError(f"cannot create run folder {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot create run folder {path}: {probe} is not writable")


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's best.pt (its last.pt when there is no best)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in (layout.BEST, layout.LAST):
        if (path / name).exists():
            return path / name
    raise CheckpointNotFoundError(f"{path} holds no checkpoint (no best.pt or last.pt)")


def open_for_resume(path: str | Path) -> tuple[Path, Checkpoint, list[Path]]:
    """A run folder (its newest good checkpoint) or one checkpoint file."""
    path = Path(path)
    if not path.exists() and not os.path.lexists(path):  # a symlink loop is there: load_checkpoint says so
        raise CheckpointNotFoundError(f"no such run folder or checkpoint: {path}")
    if path.is_dir():
        return RunFolder(path).load_latest()
    return path, load_checkpoint(path), []
