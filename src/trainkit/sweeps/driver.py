"""`trainkit sweep`: N trials at once on this machine, each an ordinary run in its own process.

The sweep process holds the Optuna study; each slot (a thread) claims a trial, starts a trial
process (`python -m trainkit.sweeps.worker`) with its share of the cores, answers its pruning
questions, and tells Optuna how it ended. Nothing here imports torch: the trial processes do.

Crash safety is the runs' own (a trial process stopped by a signal saves a checkpoint first;
one killed outright resumes from its last one) plus the study store's transactions. Running
the same command again continues: a stopped or dead trial is queued again and resumes its run
folder, finished ones are left alone, and `trials` counts every process's runs together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from trainkit.errors import ConfigError, TrainingInterrupted, TrainkitError
from trainkit.runfolder.fileio import atomic_write_text
from trainkit.runfolder.layout import LATEST, RUN_MARKERS, STEP_FILE
from trainkit.runfolder.runlog import read_status
from trainkit.sweeps import layout
from trainkit.sweeps.report import objective_value, summarize, write_outputs
from trainkit.sweeps.spec import Sweep
from trainkit.sweeps.study import RunLock, Study, config_values, quiet_optuna
from trainkit.sweeps.worker import FD_ENV
from trainkit.tracking import PARENT_RUN_ENV

log = logging.getLogger("trainkit")
MLFLOW_PARENT = "trainkit.mlflow_parent_run_id"  # the study's user attribute holding it


class SweepInterrupted(TrainingInterrupted):
    """SIGINT or SIGTERM reached the sweep: the running trials saved checkpoints and stopped."""

    def __init__(self, signum: int, running: int):
        name = signal.Signals(signum).name
        saved = f"{running} running trial{'s' if running != 1 else ''} saved a checkpoint; " if running else ""
        TrainkitError.__init__(self, f"sweep interrupted by {name}; {saved}run the same command again to continue")
        self.signum, self.run_dir, self.step = signum, None, 0
        self.exit_code = 128 + signum


class TrialSetupError(TrainkitError):
    """A trial failed for a reason every trial shares (missing data, a full disk): the sweep stops."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gpus(sweep: Sweep) -> list[str]:
    """The GPUs to deal out to the trials, one each in turn; none unless trials may use CUDA."""
    if sweep.base.trainer.device not in ("auto", "cuda"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    try:
        import torch  # only asked when the trials may run on CUDA

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / LATEST).exists() or any(STEP_FILE.match(p.name) for p in run_dir.glob("step-*.pt"))


class Driver:
    def __init__(self, sweep: Sweep, jobs: int = 1, storage: str | None = None):
        self.sweep, self.jobs, self.storage_url = sweep, jobs, storage
        self.total = sweep.trials
        self.threads = max(1, cpu_cores() // jobs)
        self.gpus: list[str] = []
        self.stopping = False
        self.signum: int | None = None
        self.error: TrainkitError | None = None
        self.wake = threading.Event()
        self.children: dict[int, subprocess.Popen] = {}  # slot -> the trial process it runs
        self.running: dict[int, Any] = {}  # slot -> the Optuna trial it runs (for heartbeats)
        self.study: Study
        self.mlflow_parent: str | None = None  # the sweep's MLflow run: every trial's run is its child

    # -- the whole sweep
    def run(self) -> dict[str, Any]:
        with quiet_optuna():
            self.study = Study(self.sweep, self.storage_url)
            self._describe()
            self.gpus = _gpus(self.sweep) if self.jobs > 1 else []
            done = sum(r.status in ("complete", "pruned", "failed") for r in self.study.runs())
            cpus = f"{self.threads} CPU thread{'s' if self.threads > 1 else ''} each ({cpu_cores()} cores)"
            gpus = f", GPUs {', '.join(self.gpus)} dealt out in turn" if len(self.gpus) > 1 else ""
            log.info(
                f"sweep {self.sweep.name}: {self.total} trials ({done} done), {self.jobs} at a time in their own "
                f"processes, {cpus}{gpus}; study in {self.study.where}; runs in {self.sweep.folder}"
            )
            self.mlflow_parent = self._start_mlflow_parent()
            try:
                self._loop()
            finally:
                self._end_mlflow_parent()
            summary = self._summary()
            write_outputs(self.sweep, summary)
        if self.error is not None:
            raise self.error
        if self.signum is not None:
            raise SweepInterrupted(self.signum, self.stopped_running)
        return summary

    def _describe(self) -> None:
        spec = self.sweep.spec
        about = {
            "name": spec.name,
            "sweep_file": str(self.sweep.path.resolve()),
            "config": str(self.sweep.config_path.resolve()),
            "storage": self.study.where,
            "objective": spec.objective.model_dump(),
            "params": {k: p.model_dump() for k, p in spec.params.items()},
            "trials": self.total,
        }
        atomic_write_text(self.sweep.folder / layout.SWEEP, json.dumps(about, indent=1) + "\n")

    def _start_mlflow_parent(self) -> str | None:
        """When the base config tracks with MLflow: the sweep's own MLflow run, created by the
        first process to work on the study and kept in it (so a rerun, or another machine,
        reopens the same run). A tracker never stops training: failing, the trials are tracked
        without a parent, and a warning says so."""
        settings = self.sweep.base.logging.mlflow
        if settings is None:
            return None
        from trainkit.tracking.mlflow_sink import start_parent_run

        try:
            with self.study.claim_lock():  # one process creates it
                stored = self.study.user_attr(MLFLOW_PARENT)
                run_id = start_parent_run(
                    settings, self.sweep.name, stored, tags={"trainkit.sweep_dir": str(self.sweep.folder)}
                )
                if stored is None:
                    self.study.set_user_attr(MLFLOW_PARENT, run_id)
        except TrainkitError as exc:
            log.warning(f"{exc}; the trials are tracked without a parent run")
            return None
        return run_id

    def _end_mlflow_parent(self) -> None:
        """FINISHED when every trial is done, KILLED after a signal, FAILED after an error; a
        sweep that other processes are still working on leaves its run RUNNING."""
        if self.mlflow_parent is None:
            return
        from trainkit.tracking.mlflow_sink import end_parent_run

        if self.signum is not None:
            status = "KILLED"
        elif self.error is not None:
            status = "FAILED"
        elif self.study.finished(self.total):
            status = "FINISHED"
        else:
            return
        try:
            end_parent_run(self.sweep.base.logging.mlflow, self.mlflow_parent, status)  # type: ignore[arg-type]
        except TrainkitError as exc:
            log.warning(str(exc))

    def _loop(self) -> None:
        self.stopped_running = 0
        in_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        slots = [threading.Thread(target=self._slot, args=(i,), name=f"sweep-slot-{i}") for i in range(self.jobs)]
        beat = threading.Thread(target=self._heartbeats, daemon=True)
        try:
            for thread in slots:
                thread.start()
            if self.study.rdb is not None:
                beat.start()
            for thread in slots:
                while thread.is_alive():
                    thread.join(0.2)  # short waits: the signal handler runs between them
        finally:
            self.stopping = True
            self.wake.set()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            print(
                f"\n{signal.Signals(signum).name} received: the running trials save a checkpoint and stop...",
                file=sys.stderr,
                flush=True,
            )
        self._stop(signum)

    def _stop(self, signum: int = signal.SIGTERM) -> None:
        self.stopping = True
        self.wake.set()
        for child in list(self.children.values()):
            if child.poll() is None:
                child.send_signal(signum)  # each saves a checkpoint at its next step

    def _heartbeats(self) -> None:
        interval = self.sweep.spec.heartbeat.interval
        while not self.wake.wait(interval):
            for trial in list(self.running.values()):
                try:
                    self.study.heartbeat(trial)
                except Exception as exc:  # the database is away for a moment; its grace period allows that
                    log.warning(f"heartbeat of trial {trial.number} failed: {exc}")

    # -- one slot: claim, run, tell, again
    def _slot(self, slot: int) -> None:
        try:
            while not self.stopping:
                with self.study.claim_lock():
                    plan = self.study.plan(self.total)
                    if plan == "claim":
                        trial, root = self.study.ask()
                        lock = RunLock(self.sweep.folder, root)
                        locked = lock.acquire()
                if plan == "done":
                    return
                if plan == "wait":  # the other runs are in other hands; one may come back to us
                    self.wake.wait(min(5, self.sweep.spec.heartbeat.interval) if self.study.rdb else 1.0)
                    continue
                self.running[slot] = trial
                try:
                    self._attempt(slot, trial, root, lock, locked)
                finally:
                    self.running.pop(slot, None)
                    lock.release()
                with self.study.claim_lock():
                    write_outputs(self.sweep, self._summary())
        except TrainkitError as exc:
            self._fail_sweep(exc)
        except Exception as exc:  # a database gone, a bug: one line, and the sweep stops
            self._fail_sweep(TrainkitError(f"the sweep stopped: {type(exc).__name__}: {exc}".splitlines()[0]))

    def _fail_sweep(self, error: TrainkitError) -> None:
        if self.error is None:
            self.error = error
        self._stop()

    def _attempt(self, slot: int, trial: Any, root: int, lock: RunLock, locked: bool) -> None:
        name = layout.trial_name(root)
        label = name if trial.number == root else f"{name} (Optuna trial {trial.number})"
        while not locked and not self.stopping:
            log.info(f"{label}: another process still trains it; waiting for it to let go")
            self.wake.wait(2.0)
            locked = lock.acquire()
        if not locked:
            self.study.interrupted(trial, "the sweep was stopped")
            return
        run_dir = self.sweep.folder / name
        values = config_values(self.sweep, trial.params)
        status = read_status(run_dir).get("status")
        if status in ("complete", "pruned"):  # finished, but its process died before telling Optuna
            self._finish(trial, label, run_dir, status, None)
            return
        resume = _has_checkpoint(run_dir)
        job: dict[str, Any] = {
            "run_dir": str(run_dir),
            "resume": resume,
            "threads": self.threads,
            "metric": self.sweep.spec.objective.metric,
            # the plugins the base config imports: the user's leave to import them again on resume
            "imports": list(self.sweep.base.imports),
        }
        if not resume:
            try:
                cfg = self.sweep.trial_config(values, name)
            except ConfigError as exc:  # these values together make no valid config
                self.study.fail(trial, str(exc).splitlines()[-1].strip(" -"))
                log.info(f"{label} failed: {exc}")
                return
            job |= {"config": cfg.to_dict(), "overwrite": any((run_dir / m).exists() for m in RUN_MARKERS)}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        log.info(f"{label} resumes from its last checkpoint: {shown}" if resume else f"{label} started: {shown}")
        job["epochs"] = values.get("trainer.epochs", self.sweep.base.trainer.epochs)
        end = self._converse(slot, trial, job, lock, run_dir)
        self._finish(trial, label, run_dir, end.get("status"), end)

    def _converse(self, slot: int, trial: Any, job: dict[str, Any], lock: RunLock, run_dir: Path) -> dict[str, Any]:
        """Start the trial process, answer its questions, return its last word."""
        logs = self.sweep.folder / layout.LOGS
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        if self.mlflow_parent is not None:
            env[PARENT_RUN_ENV] = self.mlflow_parent
        read_end, write_end = os.pipe()
        env[FD_ENV] = str(write_end)
        with open(logs / f"{run_dir.name}.log", "ab") as log_file:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(
                f"=== {stamp} Optuna trial {trial.number}, {'resume' if job['resume'] else 'train'}\n".encode()
            )
            log_file.flush()
            try:
                child = subprocess.Popen(
                    [sys.executable, "-m", "trainkit.sweeps.worker"],
                    stdin=subprocess.PIPE,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=(write_end, lock.fd) if lock.fd is not None else (write_end,),
                    text=True,
                )
            finally:
                os.close(write_end)
            self.children[slot] = child
            if self.stopping:  # stopped while it started
                child.send_signal(self.signum or signal.SIGTERM)
            try:
                return self._talk(child, trial, job, read_end)
            finally:
                # on any error here: its stdin closing makes it save a checkpoint and stop, not wait for us
                with contextlib.suppress(OSError):
                    child.stdin.close()  # type: ignore[union-attr]
                child.wait()
                self.children.pop(slot, None)

    def _talk(self, child: subprocess.Popen, trial: Any, job: dict[str, Any], read_end: int) -> dict[str, Any]:
        assert child.stdin is not None
        stdin: IO[str] = child.stdin
        end: dict[str, Any] = {}
        with os.fdopen(read_end, "r", encoding="utf-8") as messages:
            try:
                stdin.write(json.dumps(job) + "\n")
                stdin.flush()
                for line in messages:
                    message = json.loads(line)
                    if message["event"] == "epoch":
                        # reported always; never pruned at its last epoch: stopping saves nothing then
                        prune = self.study.report(trial, message["epoch"], message["value"])
                        prune = prune and message["epoch"] < job["epochs"]
                        stdin.write(json.dumps({"prune": prune}) + "\n")
                        stdin.flush()
                    elif message["event"] == "end":
                        end = message
            except (BrokenPipeError, ValueError):
                pass  # it died mid-sentence: its exit status tells
        code = child.wait()
        if not end:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            end = {"status": "interrupted", "error": f"its process was {how}", "kind": "trial", "exit_code": code}
        return end

    def _finish(self, trial: Any, label: str, run_dir: Path, status: str | None, end: dict[str, Any] | None) -> None:
        end = end or {}
        metric = self.sweep.spec.objective.metric
        if status == "complete":
            value = objective_value(run_dir, self.sweep.spec.objective)
            if value is None or value != value or value in (float("inf"), float("-inf")):
                self.study.fail(trial, f"no finite {metric} in its epoch records")
                log.info(f"{label} failed: no finite {metric} in its epoch records")
                return
            self.study.complete(trial, value)
            log.info(f"{label}: {metric} {value:.6g}")
        elif status == "pruned":
            self.study.prune(trial)
            log.info(f"{label}: {end.get('error') or 'pruned'}")
        elif status == "failed" and end.get("kind") == "trial":
            self.study.fail(trial, end.get("error") or "failed")
            log.info(f"{label} failed: {end.get('error')}")
        elif status == "failed":  # the set-up's fault, the same for every trial: stop and say so
            self.study.interrupted(trial, end.get("error") or "failed")
            self._fail_sweep(
                TrialSetupError(f"{label}: {end.get('error')} (log: {self._log_of(run_dir)})", end["exit_code"])
            )
        else:
            self.study.interrupted(trial, end.get("error") or "stopped")
            if self.stopping:
                self.stopped_running += 1
            else:
                log.warning(f"{label} stopped ({end.get('error')}); it resumes from its last checkpoint")

    def _log_of(self, run_dir: Path) -> Path:
        return self.sweep.folder / layout.LOGS / f"{run_dir.name}.log"

    def _summary(self) -> dict[str, Any]:
        return summarize(self.sweep, self.study.runs(), self.study.where)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value


def run_sweep(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, jobs: int = 1, storage: str | None = None
) -> dict[str, Any]:
    """Run (or continue) the sweep a sweep file describes; returns its summary (see report.py).
    `overrides` are added to the sweep file's (e.g. data.root=... on this machine)."""
    from trainkit.sweeps.spec import load_sweep
    from trainkit.sweeps.study import require_optuna

    if jobs < 1:
        raise TrainkitError("jobs must be at least 1")
    require_optuna()
    sweep = load_sweep(path, overrides)
    return Driver(sweep, jobs, storage).run()
