"""Sweeps: many runs of one base config, their values chosen by Optuna (`trainkit sweep`).

spec.py reads and checks the sweep file; study.py is the Optuna side (storage, sampler,
pruner, and the count of runs across processes); driver.py runs trials in their own processes
(worker.py); report.py writes what was found; layout.py names the sweep folder's files. Each
trial is an ordinary run folder. Nothing is imported here, so reading a sweep folder's
layout stays light: `from trainkit.sweeps.driver import run_sweep`.
"""
