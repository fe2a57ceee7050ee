"""`trainkit runs`: what the run folders under a directory hold, read from their text files.

Each run folder has config.yaml, status.json (written by the training process at every
checkpoint and when it ends), latest.json and metrics.jsonl. Only those small files are
read, never a checkpoint, so listing many runs is instant and torch is not imported.

A process killed with SIGKILL (or a machine that lost power) cannot write its final
status: its status.json still says "running". If nobody holds the run's lock (run.lock,
tested without waiting; or, for older runs, the pid is no longer alive on this machine),
the run is reported as interrupted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from trainkit.errors import UsageError, one_line
from trainkit.runfolder.layout import CONFIG, LATEST, RUN_MARKERS
from trainkit.runfolder.lock import is_locked
from trainkit.runfolder.runlog import read_json, read_records, read_status
from trainkit.sweeps.layout import is_sweep, trial_folders

COLUMNS = ("name", "model", "dataset", "epochs", "best", "status", "updated")


def pid_alive(pid: Any) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to another user
        return True
    except OSError:
        return False
    return True


def _writer_alive(folder: Path, status: dict[str, Any]) -> bool:
    """Whether the process writing the run lives: its lock says so from any machine; runs
    written before run.lock existed have only the pid, which means something on this one."""
    locked = is_locked(folder)
    return locked if locked is not None else pid_alive(status.get("pid"))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _last_epoch(folder: Path) -> int:
    """The last epoch record's number in metrics.jsonl (0 if none)."""
    records = read_records(folder, "epoch")
    return records[-1].get("epoch", 0) if records else 0


def _section_name(config: dict[str, Any], section: str) -> str | None:
    value = config.get(section)
    return value.get("name") if isinstance(value, dict) else None


def run_info(folder: Path) -> dict[str, Any]:
    """One run's summary; every field may be None when its file is missing or damaged."""
    config = _read_config(folder / CONFIG)
    status = read_status(folder)
    latest = read_json(folder / LATEST)
    epochs_done = status.get("epoch", latest.get("epoch"))
    trainer = config["trainer"] if isinstance(config.get("trainer"), dict) else {}
    total = status.get("epochs", trainer.get("epochs"))
    state = status.get("status")
    if state is None:
        epochs_done = epochs_done if epochs_done is not None else _last_epoch(folder)
        state = "unknown"
    elif state == "running" and not _writer_alive(folder, status):
        state = "interrupted"  # killed without the chance to say so (kill -9, power loss)
    updated = status.get("updated")
    if updated is None:
        stamps = [p.stat().st_mtime for p in (folder / n for n in RUN_MARKERS) if p.exists()]
        updated = max(stamps) if stamps else None
    return {
        "name": folder.name,
        "path": str(folder),
        "model": _section_name(config, "model"),
        "dataset": _section_name(config, "data"),
        "epochs_done": epochs_done,
        "epochs": total,
        "best_metric": status.get("best_metric"),
        "monitor": status.get("monitor"),
        "status": state,
        "message": status.get("message"),
        "step": status.get("step", latest.get("step")),
        "updated": updated,
    }


def is_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).exists() for name in RUN_MARKERS)


def list_runs(directory: str | Path) -> list[dict[str, Any]]:
    """The runs directly under `directory` (or `directory` itself if it is a run), newest first."""
    base = Path(directory)
    if not base.is_dir():
        raise UsageError(f"no such folder: {base}" if not base.exists() else f"{base} is not a folder")
    folders = [base] if is_run(base) else sorted(p for p in base.iterdir() if is_run(p))
    runs = [run_info(folder) for folder in folders]
    runs.sort(key=lambda r: r["updated"] or 0.0, reverse=True)
    if not is_run(base):  # each sweep's trials as one group, after the runs, named sweep/trial-NNNN
        for sweep in sorted(p for p in base.iterdir() if p.is_dir() and is_sweep(p)):
            runs += [
                run_info(t) | {"name": f"{sweep.name}/{t.name}", "sweep": sweep.name} for t in trial_folders(sweep)
            ]
    return runs


def _cells(run: dict[str, Any]) -> list[str]:
    done, total = run["epochs_done"], run["epochs"]
    epochs = f"{done if done is not None else '?'}/{total if total is not None else '?'}"
    best = "-"
    if isinstance(run["best_metric"], (int, float)):
        best = f"{run['monitor'] or 'metric'} {run['best_metric']:.4f}"
    updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["updated"])) if run["updated"] else "-"
    cells = [run["name"], run["model"] or "?", run["dataset"] or "?", epochs, best, run["status"], updated]
    # A folder's name and its config.yaml's values are whatever is on disk (a config edited by
    # hand may name a model 5): each cell is one line of text.
    return [one_line(cell) for cell in cells]


def format_table(runs: list[dict[str, Any]]) -> str:
    """Plain aligned columns (no colour, no box drawing): readable in a pipe or a log."""
    rows = [list(COLUMNS)] + [_cells(run) for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
