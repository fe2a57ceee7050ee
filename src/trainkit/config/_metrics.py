"""The metrics a run records, per task, and what early stopping may watch among them.

A data set declares its task where it is registered (`@DATASETS.register("mnist",
task="classification")`), so `trainkit validate` can check `trainer.early_stopping.metric`
against what the run will actually record; a data set registered without the trait is
checked when it is built, before the first step. Either way a name the run never records
is a config error (exit 2), not a run that trains all its epochs without a word.
"""

from __future__ import annotations

from typing import Any

from trainkit.errors import ConfigError
from trainkit.registry import DATASETS, did_you_mean

# The keys of a run's epoch records that hold a metric (loop.fit writes val_<evaluate's keys>).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("val_loss", "val_accuracy", "train_loss"),
    "regression": ("val_loss", "val_mse", "val_mae", "val_r2", "train_loss"),
}
ALL_METRICS = tuple(dict.fromkeys(m for names in TASK_METRICS.values() for m in names))

# Which way is better, by the metric's last word: accuracy and R² rise, errors and losses fall.
_HIGHER_IS_BETTER = {"accuracy": True, "acc": True, "r2": True, "loss": False, "mse": False, "mae": False}

STOPPER = ("trainer", "early_stopping")


def infer_mode(metric: str) -> str | None:
    """'max' or 'min' for a metric name, None when its name does not say."""
    higher = _HIGHER_IS_BETTER.get(metric.rsplit("_", 1)[-1])
    return None if higher is None else ("max" if higher else "min")


def dataset_task(name: Any) -> str | None:
    """The task a registered data set declares (its `task=` trait), None if it declares none."""
    if not isinstance(name, str) or name not in DATASETS:
        return None
    task = DATASETS.get(name).traits.get("task")
    return task if task in TASK_METRICS else None


def unknown_metric(metric: str, task: str | None) -> str | None:
    """The message for an early-stopping metric the run will not record, None if it will."""
    known = TASK_METRICS[task] if task else ALL_METRICS
    if metric in known:
        return None
    records = f"a {task} run records" if task else "runs record"
    return f"unknown metric '{metric}'{did_you_mean(metric, known)} ({records}: {', '.join(known)})"


def early_stopping_problems(raw: Any) -> list[tuple[tuple[str, ...], str]]:
    """(key path, message) for the early-stopping metric of a raw config, checked against the
    metrics its data set's task produces (or every task's, when the data set declares none)."""
    trainer = raw.get("trainer") if isinstance(raw, dict) else None
    stopper = trainer.get("early_stopping") if isinstance(trainer, dict) else None
    if not isinstance(stopper, dict):
        return []
    metric = stopper.get("metric", "val_loss")
    if not isinstance(metric, str):
        return []  # the structural pass reports the type
    data = raw.get("data")
    message = unknown_metric(metric, dataset_task(data.get("name") if isinstance(data, dict) else None))
    return [((*STOPPER, "metric"), message)] if message else []


def complete_early_stopping(config: dict[str, Any]) -> None:
    """Fill in an unset `mode` from the metric, in place, so the saved config says what ran."""
    stopper = (config.get("trainer") or {}).get("early_stopping")
    if isinstance(stopper, dict) and stopper.get("mode") is None:
        stopper["mode"] = infer_mode(stopper["metric"])


def check_metric_for_task(stopper: Any, task: str) -> None:
    """At build time, once the data set's task is known: the metric must be one it records."""
    if stopper is None or task not in TASK_METRICS:
        return
    message = unknown_metric(stopper.metric, task)
    if message:
        raise ConfigError(f"trainer.early_stopping.metric: {message}")
