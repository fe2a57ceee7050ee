"""`trainkit plot`: learning curves of one or more runs, from their metrics.jsonl.

First panel: the training loss (the "train" records, every `log_every` steps, placed at
fractional epochs: optimizer steps / steps per epoch) and the validation loss (one "epoch"
record per epoch). Then one panel per validation metric the runs recorded: accuracy
(classification, on a 0-1 axis) and MAE (regression), each on its own axis, so a
classification run and a regression run plotted together never share a scale. Each run
gets one colour; solid lines are training, dashed lines with markers are validation. The
x-axes start at 0 and end at a whole epoch, so a run stopped inside its first epoch shows
its steps spread over that epoch.

matplotlib is an optional extra (`pip install 'trainkit[plot]'`). The figure is drawn on
an Agg canvas without pyplot, so no window, display or global backend state is involved;
`make_figure` returns it (for tests and notebooks), `plot_runs` writes it to a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainkit.errors import UsageError
from trainkit.runfolder.layout import METRICS
from trainkit.runfolder.runlog import read_records, read_status

DPI = 100
# The validation metrics that get a panel: (record key, title, fixed bounds of its values).
SCORES: tuple[tuple[str, str, tuple[float, float] | None], ...] = (
    ("val_accuracy", "validation accuracy", (0.0, 1.0)),
    ("val_mae", "validation MAE", None),
)


def _metrics_file(run: str | Path) -> Path:
    path = Path(run)
    if path.is_dir():
        path = path / METRICS
    if not path.exists():
        raise UsageError(f"no metrics found: {path} does not exist (give a run folder or its {METRICS})")
    if path.name != METRICS:
        raise UsageError(f"{path}: expected a run folder or a {METRICS} file")
    return path


def _steps_per_epoch(folder: Path, epochs: list[dict[str, Any]]) -> float | None:
    """Optimizer steps per epoch: what the run said in status.json, or the first epoch's count."""
    said = read_status(folder).get("steps_per_epoch")
    if isinstance(said, int) and not isinstance(said, bool) and said > 0:
        return float(said)
    if epochs and epochs[0].get("step"):
        return epochs[0]["step"] / epochs[0]["epoch"]
    return None


def load_curves(run: str | Path) -> dict[str, Any]:
    """The series one run contributes: x in epochs, y per metric."""
    path = _metrics_file(run)
    records = read_records(path.parent)
    train = [r for r in records if r.get("type") == "train" and "loss" in r]
    epochs = [r for r in records if r.get("type") == "epoch"]
    if not train and not epochs:
        raise UsageError(f"{path}: holds no training records yet")
    # where each epoch ended, in optimizer steps, to place the step-wise train records
    ends = {r["epoch"]: r["step"] for r in epochs}
    per_epoch = _steps_per_epoch(path.parent, epochs)
    last_step = {r["epoch"]: r["step"] for r in train}  # fallback length of an unfinished epoch

    def fractional_epoch(record: dict[str, Any]) -> float:
        epoch = record["epoch"]
        start = ends.get(epoch - 1, (epoch - 1) * per_epoch if per_epoch else 0)
        length = ends[epoch] - start if epoch in ends else (per_epoch or last_step[epoch] - start)
        return epoch - 1 + (record["step"] - start) / length if length > 0 else float(epoch)

    regression = any("val_mae" in r for r in epochs)
    score_key = "val_mae" if regression else "val_accuracy"
    if train:
        train_x, train_y = [fractional_epoch(r) for r in train], [r["loss"] for r in train]
    else:  # log_every longer than an epoch: fall back to the epoch means
        train_x, train_y = [r["epoch"] for r in epochs], [r.get("train_loss") for r in epochs]
    return {
        "name": path.parent.name,
        "train": (train_x, train_y),
        "train_per_epoch": not train,
        "val_loss": _series(epochs, "val_loss"),
        "score": _series(epochs, score_key),
        "score_key": score_key,
        "scores": {key: _series(epochs, key) for key, _, _ in SCORES if any(key in r for r in epochs)},
    }


def _series(epochs: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one metric of the epoch records (records without it skipped)."""
    having = [r for r in epochs if key in r]
    return [r["epoch"] for r in having], [r[key] for r in having]


def _import_matplotlib() -> tuple[Any, Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'trainkit[plot]'") from None
    return Figure, FigureCanvasAgg, MaxNLocator


def make_figure(runs: Sequence[str | Path], width: int = 900, height: int = 350) -> Any:
    """The runs' curves as a matplotlib Figure (on an Agg canvas): a loss panel, then one panel
    per validation metric the runs recorded."""
    if not runs:
        raise UsageError("give at least one run folder to plot")
    if width < 200 or height < 150:
        raise UsageError(f"figure size {width}x{height} px is too small to read; use at least 200x150")
    curves = [load_curves(run) for run in runs]
    Figure, FigureCanvasAgg, MaxNLocator = _import_matplotlib()
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    scores = [(key, title, bounds) for key, title, bounds in SCORES if any(key in c["scores"] for c in curves)]
    axes = fig.subplots(1, 1 + len(scores), squeeze=False)[0]
    loss_ax, names = axes[0], _labels([c["name"] for c in curves])
    for i, (curve, name) in enumerate(zip(curves, names, strict=True)):
        color = f"C{i % 10}"
        marker = "o" if curve["train_per_epoch"] else None
        loss_ax.plot(
            *curve["train"], color=color, linewidth=1, alpha=0.8, marker=marker, markersize=3, label=f"{name} train"
        )
        if curve["val_loss"][0]:
            loss_ax.plot(*curve["val_loss"], color=color, linestyle="--", marker="o", markersize=3, label=f"{name} val")
        for ax, (key, _, _) in zip(axes[1:], scores, strict=True):
            if key in curve["scores"]:
                ax.plot(*curve["scores"][key], color=color, linestyle="--", marker="o", markersize=3, label=name)
    loss_ax.set(ylabel="loss", title="loss")
    loss_ax.set_yscale("log" if _spans_decades(curves) else "linear")
    for ax, (key, title, bounds) in zip(axes[1:], scores, strict=True):
        ax.set(title=title)
        if bounds is not None:
            ax.set_ylim(*_within(bounds, [v for c in curves for v in c["scores"].get(key, ([], []))[1]]))
    last = max([1.0] + [x for c in curves for x in c["train"][0] + c["val_loss"][0]])
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_xlim(0, math.ceil(last - 1e-9))  # from the start to the last (whole) epoch
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def _within(bounds: tuple[float, float], values: list[float]) -> tuple[float, float]:
    """Axis limits around `values` with a little room, never past the metric's own bounds."""
    low, high = bounds
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return low, high
    pad = max(0.02 * (high - low), 0.05 * (max(finite) - min(finite)))
    return max(low, min(finite) - pad), min(high, max(finite) + pad)


def plot_runs(runs: Sequence[str | Path], output: str | Path, width: int = 900, height: int = 350) -> Path:
    """Draw the runs' curves into `output` (png, svg or pdf by its suffix); returns the path."""
    fig = make_figure(runs, width, height)
    output = Path(output)
    try:
        fig.savefig(output)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write {output}: {exc}") from None
    return output


def _labels(names: list[str]) -> list[str]:
    """Run names, numbered where two runs share one (folders with the same name elsewhere)."""
    return [f"{n} ({names[:i].count(n) + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _spans_decades(curves: list[dict[str, Any]]) -> bool:
    """A log scale when the losses fall by over 20x, so the late epochs stay visible."""
    values = [v for c in curves for v in c["train"][1] + c["val_loss"][1] if isinstance(v, (int, float)) and v > 0]
    return bool(values) and max(values) / min(values) > 20
