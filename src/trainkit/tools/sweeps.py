"""What `trainkit sweep` prints and `trainkit plot SWEEP_DIR` draws, from a sweep's summary.

The plot reads the sweep folder's summary.json only (no database, no Optuna, no torch): the
optimisation history (each trial's objective and the best so far) and, per param, the
objective against the param's values. Drawn on an Agg canvas as tools/plot.py does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainkit.errors import UsageError
from trainkit.sweeps import layout
from trainkit.tools.plot import DPI, _import_matplotlib


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def sweep_table(summary: dict[str, Any]) -> Any:
    """A rich Table: one row per trial, its params, objective, state and time."""
    from rich.table import Table

    objective = summary["objective"]
    best = (summary.get("best") or {}).get("number")
    done = sum(t["state"] in ("complete", "pruned", "failed") for t in summary["trials"])
    title = f"sweep {summary['sweep']}: {done}/{summary['trials_total']} trials done"
    title += f", {objective['mode']} {objective['metric']}"
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    for key in summary["params"]:
        table.add_column(key, justify="right")
    table.add_column(objective["metric"], justify="right")
    table.add_column("state")
    table.add_column("time", justify="right")
    for trial in summary["trials"]:
        value = "-" if trial["value"] is None else f"{trial['value']:.4f}"
        state = trial["state"]
        if trial.get("error"):
            state += f": {trial['error']}"
        table.add_row(
            layout.trial_name(trial["number"]),
            *(_fmt(trial["params"].get(k, "")) for k in summary["params"]),
            value,
            state,
            _duration(trial["seconds"]),
            style="bold" if trial["number"] == best else None,
        )
    return table


def seeds_table(summary: dict[str, Any]) -> Any | None:
    """Mean and standard deviation over seeds, per configuration (when `seed` is swept)."""
    configurations = summary.get("configurations")
    if not configurations:
        return None
    from rich.table import Table

    metric = summary["objective"]["metric"]
    keys = [k for k in summary["params"] if k != "seed"]
    table = Table(title=f"{metric} over seeds", title_justify="left")
    for key in keys:
        table.add_column(key, justify="right")
    for column in ("seeds", "mean", "std"):
        table.add_column(column, justify="right")
    for group in configurations:
        std = "-" if group["std"] is None else f"{group['std']:.4f}"
        table.add_row(*(_fmt(group["params"].get(k, "")) for k in keys), str(group["n"]), f"{group['mean']:.4f}", std)
    return table


def best_line(summary: dict[str, Any]) -> str:
    best = summary.get("best")
    if best is None:
        return f"no trial has completed in {summary['folder']}"
    metric = summary["objective"]["metric"]
    return (
        f"best: {layout.trial_name(best['number'])}, {metric} {best['value']:.6g}; "
        f"its config: {Path(summary['folder']) / layout.BEST}"
    )


def read_summary(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / layout.SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{sweep_dir}: no trial has finished yet (no {layout.SUMMARY})") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return summary


def plot_sweep(sweep_dir: str | Path, output: str | Path, width: int = 900, height: int = 350) -> Path:
    """The optimisation history and each param against the objective, into `output`."""
    if width < 200 or height < 150:
        raise UsageError(f"figure size {width}x{height} px is too small to read; use at least 200x150")
    summary = read_summary(sweep_dir)
    done = [t for t in summary["trials"] if t["value"] is not None]
    if not done:
        raise UsageError(f"{sweep_dir}: no complete trial to plot yet")
    Figure, FigureCanvasAgg, MaxNLocator = _import_matplotlib()
    params = list(summary["params"])
    panels = 1 + len(params)
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(width / DPI, height * rows / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    _history(axes[0], done, metric, mode, MaxNLocator)
    for ax, key in zip(axes[1:], params, strict=False):
        _against(ax, key, summary["params"][key], done, metric)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(f"sweep {summary['sweep']}")
    output = Path(output)
    try:
        fig.savefig(output)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write {output}: {exc}") from None
    return output


def _history(ax: Any, done: list[dict[str, Any]], metric: str, mode: str, locator: Any) -> None:
    numbers = [t["number"] for t in done]
    values = [t["value"] for t in done]
    best, running = [], None
    for value in values:
        running = value if running is None else (max(running, value) if mode == "max" else min(running, value))
        best.append(running)
    ax.plot(numbers, values, "o", color="C0", markersize=4, label="trial")
    ax.step(numbers, best, where="post", color="C1", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title="optimisation history")
    ax.xaxis.set_major_locator(locator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _against(ax: Any, key: str, spec: dict[str, Any], done: list[dict[str, Any]], metric: str) -> None:
    xs = [t["params"].get(key) for t in done]
    ys = [t["value"] for t in done]
    if spec["type"] == "choice":
        labels = [_fmt(v) for v in spec["values"]]
        positions = {label: i for i, label in enumerate(labels)}
        ax.plot([positions.get(_fmt(x), -1) for x in xs], ys, "o", color="C0", markersize=4, alpha=0.8)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    else:
        ax.plot(xs, ys, "o", color="C0", markersize=4, alpha=0.8)
        if spec["type"] == "loguniform" or spec.get("log"):
            ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=metric, title=key)
    ax.grid(True, alpha=0.3)
