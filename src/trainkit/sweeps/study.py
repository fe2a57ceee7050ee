"""The Optuna side of a sweep: the storage, sampler and pruner the sweep file names, and the
bookkeeping that makes `trials` one total for every process working on the study.

Optuna owns the study; trainkit owns the runs. A run (`trial-0007/`) may take several Optuna
trials: when the process training it dies or is stopped, its Optuna trial is marked failed
and a copy is queued (Optuna's RetryHeartbeatStaleTrialCallback), which resumes the same run
folder from its last checkpoint. So the sweep counts runs: a run is done when its latest
attempt is complete, pruned, or failed for a reason of its own (recorded in the trial).

Who notices a dead process: with a database (`--storage postgresql://...`), Optuna's
heartbeat; with the journal file, the run's lock file (`locks/trial-0007.lock`), held by the
process training it and released by the kernel when it dies, however it dies.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import importlib.util
import logging
import math
import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.errors import TrainkitError, UsageError
from trainkit.sweeps import layout
from trainkit.sweeps.spec import ChoiceParam, IntParam, LogUniformParam, Sweep

log = logging.getLogger("trainkit")

MAX_ATTEMPTS = 4  # a run stopped or killed this many times is given up (e.g. the OOM killer, every time)
ERROR = "trainkit.error"  # user attr: why the trial failed; a failure of its own, never retried
SPEC = "trainkit.sweep"  # study user attr: what the sweep varies and judges, to refuse a different one
DONE = ("complete", "pruned", "failed")
# Settings of a machine, not of the experiment: they may differ between the machines of one sweep.
LOCAL_KEYS = ("name", "checkpoint.dir", "trainer.device", "data.root", "data.download")


def require_optuna() -> None:
    if importlib.util.find_spec("optuna") is None:
        raise UsageError("sweeps need Optuna: pip install 'trainkit[sweep]'")


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's own chatter (a line per trial, experimental-feature warnings) off, put back after.
    Entered once around a whole sweep: warning filters are process-wide, not per thread."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        warnings.filterwarnings("ignore", message="The reported value is ignored")  # a resumed epoch
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


class RunLock:
    """An exclusive flock on `locks/trial-NNNN.lock`: whoever trains a run holds it (the trial
    process inherits it), so the kernel frees it when they die, kill -9 included."""

    def __init__(self, sweep_dir: Path, root: int):
        self.path = sweep_dir / layout.LOCKS / f"{layout.trial_name(root)}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class Run:
    """One run folder and the Optuna trials that worked on it, oldest first."""

    root: int
    attempts: list[Any] = field(default_factory=list)  # optuna FrozenTrial

    @property
    def latest(self) -> Any:
        return self.attempts[-1]

    @property
    def status(self) -> str:
        from optuna.trial import TrialState

        state = self.latest.state
        if state == TrialState.COMPLETE:
            return "complete"
        if state == TrialState.PRUNED:
            return "pruned"
        if state == TrialState.FAIL:
            given_up = len(self.attempts) >= MAX_ATTEMPTS
            return "failed" if ERROR in self.latest.user_attrs or given_up else "interrupted"
        return "running" if state == TrialState.RUNNING else "waiting"


def root_of(trial: Any) -> int:
    """The run a trial works on: its own number, or the first number of the run it retries."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


def distributions(sweep: Sweep) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found: dict[str, Any] = {}
    for key, param in sweep.spec.params.items():
        if isinstance(param, ChoiceParam):
            found[key] = CategoricalDistribution(param.choices())
        elif isinstance(param, IntParam):
            found[key] = IntDistribution(param.low, param.high, step=param.step, log=param.log)
        else:
            found[key] = FloatDistribution(param.low, param.high, log=isinstance(param, LogUniformParam))
    return found


def config_values(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's param values as config values (choices given as lists travel as JSON text)."""
    out = {}
    for key, value in params.items():
        param = sweep.spec.params.get(key)
        out[key] = param.decode(value) if isinstance(param, ChoiceParam) else value
    return out


def fingerprint(sweep: Sweep) -> dict[str, Any]:
    """What may not change between the runs of one study: the space, the objective, the base config."""
    config = sweep.base.to_dict()
    for dotted in LOCAL_KEYS:
        *parents, last = dotted.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return {
        "params": {k: p.model_dump() for k, p in sweep.spec.params.items()},
        "objective": sweep.spec.objective.model_dump(),
        "config": config,
    }


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= _flat(value, f"{prefix}{key}.")
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def _drop_unfinished_record(path: str) -> None:
    """A writer stopped mid-append (a full disk, a kill) leaves the journal's last record without
    its newline. Optuna glues the next record onto it, and from then on the study cannot be read
    at all. Under the journal's own lock, which a live writer holds while it appends, that
    unfinished record is cut off: it never took effect."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    lock = JournalFileSymlinkLock(path)
    try:
        lock.acquire()  # blocks while another process appends
    except OSError:
        return  # a read-only folder, say: not ours to repair, and Optuna reports what it finds
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            end = size
            while end > 0:  # back to the last newline, a block at a time
                start = max(0, end - 65536)
                f.seek(start)
                found = f.read(end - start).rfind(b"\n")
                if found >= 0:
                    end = start + found + 1
                    break
                end = start
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        log.warning("%s: its last record was cut short (a writer stopped mid-write); dropped it", path)
    except OSError:
        pass  # not ours to repair (read-only, say): Optuna reports what it finds
    finally:
        lock.release()


class Study:
    """The sweep's Optuna study, shared by the threads of this process (one lock) and by every
    other process working on it (the claim lock)."""

    def __init__(self, sweep: Sweep, storage_url: str | None = None):
        require_optuna()
        import optuna
        from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
        from optuna.storages.journal import JournalFileBackend

        self.sweep, self.folder = sweep, sweep.folder
        self.lock = threading.RLock()  # one Optuna call at a time from this process's threads
        # a stopped or dead run is queued again with its params and reports; it resumes its folder
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_ATTEMPTS - 1, inherit_intermediate_values=True)
        self.rdb: Any = None
        if storage_url is not None:
            self.rdb = self._database(storage_url)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainkitError(f"cannot create the sweep folder {self.folder}: {exc.strerror or exc}") from None
        if self.rdb is None:
            self.where = str(self.folder / layout.JOURNAL)
            _drop_unfinished_record(self.where)
            storage: Any = JournalStorage(JournalFileBackend(self.where))
        else:
            storage = self.rdb
        self.distributions = distributions(sweep)
        direction: Literal["maximize", "minimize"] = "maximize" if sweep.spec.objective.mode == "max" else "minimize"
        try:
            self.study = optuna.create_study(
                study_name=sweep.name,
                storage=storage,
                direction=direction,
                load_if_exists=True,
                sampler=self._sampler(0),
                pruner=self._pruner(),
            )
            self._check_same_sweep()  # its first read of a journal may find a damaged record
        except TrainkitError:
            raise
        except Exception as exc:  # the database refused us, mid-way, or a damaged journal
            raise TrainkitError(f"cannot open the study in {self.where}: {_first_line(exc)}") from None

    # -- set-up
    def _database(self, url: str) -> Any:
        from optuna.storages import RDBStorage
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            raise UsageError(f"--storage: not a database URL: {url!r} (e.g. postgresql://user@host/db)") from None
        self.where = parsed.render_as_string(hide_password=True)
        backend = parsed.get_backend_name()
        if backend not in ("postgresql", "sqlite"):
            raise UsageError(f"--storage: {backend} is not supported; give postgresql://... or sqlite:///FILE")
        if backend == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg"):
            if importlib.util.find_spec("psycopg") is None:
                raise UsageError("PostgreSQL storage needs psycopg: pip install 'trainkit[sweep]'")
        beat = self.sweep.spec.heartbeat
        for attempt in range(3):
            try:
                return RDBStorage(
                    url,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=beat.interval,
                    grace_period=beat.grace_period,
                    heartbeat_stale_trial_callback=self.retry,
                )
            except ImportError as exc:
                raise UsageError(f"the storage {self.where} needs a database driver: {exc}") from None
            except Exception as exc:
                # two machines creating the tables of a new database at once: one loses, then finds them
                if attempt == 2:
                    raise TrainkitError(f"cannot open the study storage {self.where}: {_first_line(exc)}") from None
                time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")

    def _sampler(self, seed_offset: int) -> Any:
        from optuna.samplers import RandomSampler, TPESampler

        spec = self.sweep.spec.sampler
        if spec.name == "grid":
            # the same seed in every process: a trial's grid point is an index into the shuffled grid
            space = {k: p.choices() for k, p in self.sweep.spec.params.items() if isinstance(p, ChoiceParam)}
            return _grid_sampler()(space, seed=spec.seed)
        # a new seed per claim, from the study's history: processes claiming side by side do not
        # draw the same params, and one process alone is reproducible
        seed = None if spec.seed is None else spec.seed + seed_offset
        if spec.name == "random":
            return RandomSampler(seed=seed)
        return TPESampler(seed=seed, constant_liar=True)

    def _pruner(self) -> Any:
        from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner

        spec = self.sweep.spec.pruner
        if spec.name == "median":
            return MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs)
        if spec.name == "hyperband":
            swept = "trainer.epochs" in self.sweep.spec.params
            epochs: Any = "auto" if swept else self.sweep.base.trainer.epochs
            return HyperbandPruner(
                min_resource=spec.min_epochs, max_resource=epochs, reduction_factor=spec.reduction_factor
            )
        return NopPruner()

    def _check_same_sweep(self) -> None:
        mine = fingerprint(self.sweep)
        with self.lock:
            stored = self.study.user_attrs.get(SPEC)
            if stored is None:
                self.study.set_user_attr(SPEC, mine)
                return
        old, new = _flat(stored), _flat(mine)
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if differ:
            shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
            raise UsageError(
                f"the study '{self.sweep.name}' in {self.where} was started by a different sweep "
                f"({shown} differ); keep the sweep as it was, or give this one another name"
            )

    # -- the claim: count, maybe ask, under one lock for every process
    @contextlib.contextmanager
    def claim_lock(self) -> Iterator[None]:
        with self.lock:
            if self.rdb is not None and self.rdb.engine.dialect.name == "postgresql":
                with self._advisory_lock():
                    yield
                return
            fd = os.open(self.folder / layout.STUDY_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    @contextlib.contextmanager
    def _advisory_lock(self) -> Iterator[None]:
        """A PostgreSQL advisory lock: the processes of a sweep on many machines share no folder."""
        from sqlalchemy import text

        key = int.from_bytes(
            hashlib.sha256(f"trainkit-sweep:{self.sweep.name}".encode()).digest()[:8], "big", signed=True
        )
        with self.rdb.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()

    def runs(self) -> list[Run]:
        found: dict[int, Run] = {}
        with self.lock:
            trials = self.study.get_trials(deepcopy=False)
        for trial in sorted(trials, key=lambda t: t.number):
            root = root_of(trial)
            found.setdefault(root, Run(root)).attempts.append(trial)
        return [found[k] for k in sorted(found)]

    def fail_dead(self) -> None:
        """Runs whose process died are failed, and queued again by the retry callback."""
        from optuna.storages import fail_stale_trials
        from optuna.trial import TrialState

        with self.lock:
            if self.rdb is not None:
                running = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                fail_stale_trials(self.study)  # Optuna's heartbeat; it calls self.retry
                for trial in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                    if trial.number in running:
                        beat = self.sweep.spec.heartbeat.grace_period
                        log.info(f"{_label(trial)}: no heartbeat for {beat} s, so its process is gone; it resumes")
                return
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                lock = RunLock(self.folder, root_of(trial))
                if not lock.acquire():
                    continue  # its process holds the lock: alive
                try:
                    # read again while holding the lock: a process that finished the trial told
                    # Optuna before it let go, so a trial still RUNNING now has lost its process
                    now = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
                    if now.state == TrialState.RUNNING:
                        log.info(f"{_label(trial)}: its process is gone; it resumes")
                        self._fail_and_retry(trial.number, "its process is gone")
                finally:
                    lock.release()

    def plan(self, total: int) -> str:
        """'claim' (a queued run or room for a new one), 'wait' (others are running the rest)
        or 'done'. Call under claim_lock."""
        self.fail_dead()
        runs = self.runs()
        done = sum(r.status in DONE for r in runs)
        busy = sum(r.status in ("running", "waiting") for r in runs)
        if done >= total:
            return "done"
        for run in runs:  # a run failed without being queued again (its process died in between)
            if run.status == "interrupted" and done + busy < total:
                with self.lock:
                    self.retry(self.study, copy.deepcopy(run.latest))
                busy += 1
        if any(r.status == "waiting" for r in self.runs()) or done + busy < total:
            return "claim"
        return "wait"

    def finished(self, total: int) -> bool:
        """Every one of the sweep's `total` runs is done (complete, pruned or failed for good)."""
        return sum(r.status in DONE for r in self.runs()) >= total

    def user_attr(self, key: str) -> Any:
        """A value the study keeps for every process working on it (Optuna user attributes)."""
        with self.lock:
            return self.study.user_attrs.get(key)

    def set_user_attr(self, key: str, value: Any) -> None:
        with self.lock:
            self.study.set_user_attr(key, value)

    def ask(self) -> tuple[Any, int]:
        """A trial to run (a queued retry first) and its run number. Call under claim_lock."""
        with self.lock:
            self.study.sampler = self._sampler(len(self.study.get_trials(deepcopy=False)))
            trial = self.study.ask(fixed_distributions=self.distributions)
            if self.rdb is not None:  # beat at once: a trial with no heartbeat is never found stale
                self.rdb.record_heartbeat(trial._trial_id)
            frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
            trial.set_user_attr("trainkit.host", socket.gethostname())
            trial.set_user_attr("trainkit.pid", os.getpid())
        return trial, root_of(frozen)

    # -- the end of an attempt
    def report(self, trial: Any, epoch: int, value: float) -> bool:
        """An epoch's objective to the pruner; whether the trial should stop."""
        with self.lock:
            if math.isfinite(value):
                trial.report(value, epoch)
            return bool(trial.should_prune())

    def heartbeat(self, trial: Any) -> None:
        if self.rdb is not None:
            self.rdb.record_heartbeat(trial._trial_id)

    def complete(self, trial: Any, value: float) -> None:
        self._tell(trial, values=value)

    def prune(self, trial: Any) -> None:
        from optuna.trial import TrialState

        self._tell(trial, state=TrialState.PRUNED)

    def fail(self, trial: Any, error: str) -> None:
        from optuna.trial import TrialState

        with self.lock:
            trial.set_user_attr(ERROR, error)
        self._tell(trial, state=TrialState.FAIL)

    def interrupted(self, trial: Any, why: str) -> None:
        """Failed for now, queued again: the next claim resumes its run folder."""
        with self.lock:
            self._fail_and_retry(trial.number, why)

    def _fail_and_retry(self, number: int, why: str) -> None:
        import optuna
        from optuna.trial import TrialState

        # a copy: the callback edits the trial's attrs in place, and the storage caches them
        frozen = copy.deepcopy(next(t for t in self.study.get_trials(deepcopy=False) if t.number == number))
        attempts = len(frozen.system_attrs.get("retry_history", [])) + 1
        if attempts >= MAX_ATTEMPTS:  # (Optuna offers no public way to set an attr of another's trial)
            self.study._storage.set_trial_user_attr(
                frozen._trial_id, ERROR, f"given up: stopped {attempts} times ({why})"
            )
        try:
            self.study.tell(number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another process got there first (and queued the retry)
        if attempts < MAX_ATTEMPTS:
            self.retry(self.study, frozen)

    def _tell(self, trial: Any, **kwargs: Any) -> None:
        import optuna

        with self.lock:
            try:
                self.study.tell(trial, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # its heartbeat was late, so another process failed it and runs it again
                log.warning(f"trial {trial.number} was taken over by another process; its result is left to that one")


def _grid_sampler() -> type:
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        """Optuna's grid, without its stop at the last point: Study.stop works inside optimize()
        only (a RuntimeError from tell otherwise), and the sweep counts its runs itself."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return Grid


def _label(trial: Any) -> str:
    name = layout.trial_name(root_of(trial))
    return name if trial.number == root_of(trial) else f"{name} (Optuna trial {trial.number})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
