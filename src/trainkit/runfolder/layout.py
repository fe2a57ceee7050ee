"""The names of the files in a run folder: the one place that spells them.

    <checkpoint.dir>/<name>/
        step-000001200.pt   checkpoints, newest `keep_last` kept (see folder.py)
        last.pt             hard link to the newest step file
        best.pt             hard link to the checkpoint with the best validation metric
        latest.json         pointer to the newest complete checkpoint, written last
        config.yaml         the resolved config
        metrics.jsonl       one JSON record per logged step and per epoch (runlog.py)
        status.json         running / complete / interrupted / failed, for `trainkit runs`
        tensorboard/        event files, when asked for
        run.lock            held by the one process writing the folder (lock.py); gone when it ends
        .mlflow-staging/    checkpoints waiting for their MLflow upload (logging.mlflow.log_checkpoints: all)

No torch here: `trainkit runs` and `plot` read run folders without importing it.
"""

from __future__ import annotations

import re

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
STATUS = "status.json"
LATEST = "latest.json"
LAST = "last.pt"
BEST = "best.pt"
TENSORBOARD = "tensorboard"
CORRUPT_SUFFIX = ".corrupt"
LOCK = "run.lock"
MLFLOW_STAGING = ".mlflow-staging"

STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
TEMP_GLOB = ".*.tmp-*"  # fileio.temp_path's names: a save killed midway

# Any of these means a folder holds a run (training into it again needs --overwrite).
RUN_MARKERS = (CONFIG, LAST, LATEST, METRICS, STATUS)
# What --overwrite removes, besides the step files and the TensorBoard folder.
RUN_FILES = (LAST, BEST, LATEST, CONFIG, METRICS, STATUS)


def step_file(step: int) -> str:
    return f"step-{step:09d}.pt"
