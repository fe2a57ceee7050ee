"""The names of the files in a sweep folder: the one place that spells them.

    <checkpoint.dir>/<sweep name>/
        sweep.json          what the sweep is (params, objective, storage): marks the folder as a sweep
        study.journal       the Optuna study (JournalStorage, file backend), unless --storage names a database
        study.lock          taken while a process counts the trials and claims the next one
        locks/trial-0007.lock   held by the process that trains trial-0007 (and its trial process)
        logs/trial-0007.log     what the trial process printed (every attempt appended)
        summary.json        the trials and the best one, as `trainkit sweep --json` prints it
        best.yaml           the base config with the best trial's values
        trial-0007/         an ordinary run folder

No torch, no Optuna here: `trainkit runs` and `plot` read sweep folders without them.
"""

from __future__ import annotations

from pathlib import Path

SWEEP = "sweep.json"
JOURNAL = "study.journal"
STUDY_LOCK = "study.lock"
LOCKS = "locks"
LOGS = "logs"
SUMMARY = "summary.json"
BEST = "best.yaml"


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def is_sweep(folder: Path) -> bool:
    return (folder / SWEEP).is_file()


def trial_folders(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.glob("trial-*") if p.is_dir())
