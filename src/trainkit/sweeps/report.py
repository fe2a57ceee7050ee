"""What a sweep found: one entry per run, the best one, mean and spread over seeds, best.yaml.

The same object is printed by `trainkit sweep --json`, kept in the sweep folder as
summary.json (for `trainkit plot` and `runs`, which read no database), and drawn as the table.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from trainkit.config import dump_yaml
from trainkit.runfolder.fileio import atomic_write_text
from trainkit.runfolder.runlog import read_records
from trainkit.sweeps import layout
from trainkit.sweeps.spec import Objective, Sweep
from trainkit.sweeps.study import ERROR, Run, config_values


def objective_value(run_dir: Path, objective: Objective) -> float | None:
    """The run's objective from its epoch records: the last epoch's value, or the best epoch's."""
    values = [
        r[objective.metric] for r in read_records(run_dir, "epoch") if isinstance(r.get(objective.metric), (int, float))
    ]
    if not values:
        return None
    if objective.value == "last":
        return float(values[-1])
    return float(max(values) if objective.mode == "max" else min(values))


def _seconds(run: Run) -> float:
    total = 0.0
    for trial in run.attempts:
        if trial.datetime_start is not None:
            end = trial.datetime_complete.timestamp() if trial.datetime_complete else time.time()
            total += end - trial.datetime_start.timestamp()
    return total


def run_entry(sweep: Sweep, run: Run) -> dict[str, Any]:
    latest = run.latest
    status = run.status
    value = latest.value if status == "complete" else None
    return {
        "number": run.root,
        "state": status,
        "params": config_values(sweep, latest.params),
        "value": value,
        "run_dir": str(sweep.folder / layout.trial_name(run.root)),
        "seconds": round(_seconds(run), 3),
        "attempts": [t.number for t in run.attempts],  # Optuna's trial numbers
        "error": latest.user_attrs.get(ERROR) if status == "failed" else None,
    }


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def summarize(sweep: Sweep, runs: list[Run], storage: str) -> dict[str, Any]:
    objective = sweep.spec.objective
    trials = [run_entry(sweep, run) for run in runs]
    best = None
    for entry in trials:
        if entry["value"] is not None and (best is None or _better(entry["value"], best["value"], objective.mode)):
            best = entry
    summary: dict[str, Any] = {
        "sweep": sweep.name,
        "folder": str(sweep.folder),
        "storage": storage,
        "objective": objective.model_dump(),
        "params": {k: p.model_dump() for k, p in sweep.spec.params.items()},
        "trials_total": sweep.trials,
        "best": None if best is None else {k: best[k] for k in ("number", "value", "params", "run_dir")},
        "trials": trials,
    }
    if "seed" in sweep.spec.params:
        summary["configurations"] = over_seeds(trials, objective.mode)
    return summary


def over_seeds(trials: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Complete trials grouped by their params but the seed: mean and sample standard deviation."""
    groups: dict[str, dict[str, Any]] = {}
    for entry in trials:
        if entry["value"] is None:
            continue
        params = {k: v for k, v in entry["params"].items() if k != "seed"}
        group = groups.setdefault(json.dumps(params, sort_keys=True), {"params": params, "seeds": [], "values": []})
        group["seeds"].append(entry["params"].get("seed"))
        group["values"].append(entry["value"])
    found = []
    for group in groups.values():
        values = group.pop("values")
        group |= {
            "n": len(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
        }
        found.append(group)
    found.sort(key=lambda g: -g["mean"] if mode == "max" else g["mean"])
    return found


def write_outputs(sweep: Sweep, summary: dict[str, Any]) -> None:
    """summary.json, and best.yaml once a trial is complete; each written whole or not at all."""
    atomic_write_text(sweep.folder / layout.SUMMARY, json.dumps(summary, indent=1) + "\n")
    best = summary["best"]
    if best is None:
        return
    raw = sweep.raw_with(best["params"])
    raw["name"] = f"{sweep.name}-best"
    metric = sweep.spec.objective.metric
    overrides = " ".join(sweep.spec.overrides) or "none"
    header = (
        f"# The best trial of sweep {sweep.name}: {layout.trial_name(best['number'])}, "
        f"{metric} {_fmt(best['value'])}.\n"
        f"# Its base config {sweep.config_path} with the sweep's overrides ({overrides}) and the trial's values;\n"
        f"# train it with: trainkit train {sweep.folder / layout.BEST}\n"
    )
    atomic_write_text(sweep.folder / layout.BEST, header + dump_yaml(raw))


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)
