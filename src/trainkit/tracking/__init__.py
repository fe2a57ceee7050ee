"""Experiment trackers: sinks that send a run's events elsewhere (MLflow).

A tracker is a `training.session.Sink` built from the config's `logging` section; it sees
the same records and checkpoints as the run folder and never changes what is trained.
TensorBoard stays in runfolder/runlog.py: it writes into the run folder itself.

Nothing here imports mlflow (or torch) until a run that asked for it starts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from trainkit.config import ExperimentConfig

if TYPE_CHECKING:  # the protocol only: trackers never need torch
    from trainkit.training.session import Sink

# Set by a sweep for the trials it starts: their MLflow runs become children of this run.
PARENT_RUN_ENV = "TRAINKIT_MLFLOW_PARENT_RUN_ID"


def sinks_for(cfg: ExperimentConfig, saved: dict[str, Any] | None = None) -> list[Sink]:
    """The tracking sinks the config asks for. `saved` is a resumed checkpoint's `trackers`,
    so each tracker continues its own run instead of starting a new one."""
    sinks: list[Sink] = []
    if cfg.logging.mlflow is not None:
        from trainkit.tracking.mlflow_sink import MlflowSink

        previous = (saved or {}).get(MlflowSink.state_key)
        parent = os.environ.get(PARENT_RUN_ENV) or None
        sinks.append(MlflowSink(cfg.logging.mlflow, saved=previous, parent_run_id=parent))
    return sinks
