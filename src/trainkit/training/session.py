"""One process's part of a training run: the loop's `Events`, with files written by rank 0.

The loop only calls log / save / stop_requested / progress; this is where those become
metrics.jsonl records, checkpoints in the run folder, status.json and a stop agreed by
every rank.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from trainkit import plugins
from trainkit._version import __version__
from trainkit.config import ExperimentConfig
from trainkit.errors import CheckpointError, NonFiniteLossError, RunStopped, TrainingInterrupted
from trainkit.registry import REGISTRIES
from trainkit.runfolder.checkpoint import Checkpoint, to_cpu
from trainkit.runfolder.folder import RunFolder
from trainkit.runfolder.runlog import RunLog, read_records, write_status
from trainkit.training import rng
from trainkit.training.data import DataBundle
from trainkit.training.distributed import DistContext
from trainkit.training.loop import Run, StopTraining, TrainState, fit
from trainkit.training.progress import Reporter
from trainkit.training.signals import StopRequest


def used_plugins(cfg: ExperimentConfig) -> list[str]:
    """Modules outside trainkit that a checkpoint of this config needs to be rebuilt."""
    builders = [
        registry.get(getattr(cfg, section).name).builder
        for section, registry in REGISTRIES.items()
        if getattr(cfg, section) is not None
    ]
    return list(dict.fromkeys(cfg.imports + plugins.modules_of(builders)))


def make_checkpoint(
    cfg: ExperimentConfig,
    run: Run,
    module: torch.nn.Module,
    bundle: DataBundle,
    state: TrainState,
    rng_states: list[Any],
    metrics_offset: int,
    is_best: bool,
    rank_losses: list[list[float]] | None = None,
    trackers: dict[str, Any] | None = None,
    started_from: dict[str, Any] | None = None,
) -> Checkpoint:
    return Checkpoint(
        versions={"trainkit": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        config=cfg.to_dict(),
        plugins=used_plugins(cfg),
        model=to_cpu(module.state_dict()),
        optimizer=to_cpu(run.optimizer.state_dict()),
        scheduler=run.scheduler.state_dict() if run.scheduler is not None else None,
        scaler=run.scaler.state_dict() if run.scaler is not None else None,
        epoch=state.epoch,
        step=state.step,
        best_metric=state.best_metric,
        is_best=is_best,
        state=state.to_dict(),
        rng=rng_states,
        rank_losses=rank_losses if rank_losses is not None else [list(state.epoch_losses)],
        world_size=run.dist.world_size,
        data_info=dataclasses.asdict(bundle.info),
        data_record=bundle.record,
        metrics_offset=metrics_offset,
        trackers=trackers or {},
        started_from=started_from,
        saved_at=time.time(),
    )


def early_stop(cfg: ExperimentConfig, state: TrainState) -> dict[str, Any] | None:
    """Why the run stopped early (None if it did not): the metric, its best value and epoch,
    and how many epochs followed without improving on it."""
    stopper = cfg.trainer.early_stopping
    if not state.stopped_early or stopper is None:
        return None
    return {
        "metric": stopper.metric,
        "mode": stopper.mode,
        "best": state.stop_metric_best,
        "best_epoch": state.epoch - state.bad_epochs,
        "epochs_without_improvement": state.bad_epochs,
        "patience": stopper.patience,
        "min_delta": stopper.min_delta,
    }


def describe_early_stop(stop: dict[str, Any]) -> str:
    """'val_accuracy did not improve on 0.9800 (epoch 2) for 3 epochs'."""
    best = stop["best"]
    best_text = f"{best:.4g}" if isinstance(best, float) and abs(best) >= 1000 else f"{best:.4f}"
    by = f" by more than {stop['min_delta']:g}" if stop["min_delta"] else ""
    epochs = stop["epochs_without_improvement"]
    return (
        f"{stop['metric']} did not improve{by} on {best_text} (epoch {stop['best_epoch']}) "
        f"for {epochs} epoch{'' if epochs == 1 else 's'}"
    )


def run_summary(
    folder: RunFolder, state: TrainState, monitor: str, cfg: ExperimentConfig, is_main: bool = True
) -> dict[str, Any]:
    """What train and resume return: plain data about where the run stands."""
    history = read_records(folder.path, "epoch") if is_main else []
    return {
        "run_dir": str(folder.path),
        "epochs": state.epoch,
        "step": state.step,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "monitor": monitor,
        "stopped_early": state.stopped_early,
        "early_stop": early_stop(cfg, state),
        "already_complete": False,
        "final": history[-1] if history else {},
        "history": history,
        "last_checkpoint": str(folder.last),
        "best_checkpoint": str(folder.best),
    }


class Sink(Protocol):
    """Something besides the run folder that receives a run's events on rank 0: a tracker
    (MLflow), a sweep's pruner. A sink never changes what is trained; it may end the run by
    raising a TrainkitError from `record`: a RunStopped (a pruned trial) ends it cleanly after
    the next checkpoint, with the error's status; any other stops it as failed with that message.

    A sink that must find its own state again on resume (MLflow: which run to continue) also
    has `state_key: str` and `state() -> dict`: the dict is saved in every checkpoint under
    `trackers[state_key]`, and whoever builds the sink for a resume hands it back."""

    def start(self, run_dir: Path, config: dict[str, Any], step: int) -> None: ...
    def record(self, record: dict[str, Any]) -> None: ...
    def checkpoint(self, path: Path, is_best: bool, step: int) -> None: ...
    def finish(self, status: str, message: str | None) -> None: ...


@runtime_checkable
class StatefulSink(Protocol):
    """The optional part of a Sink that saves its state in checkpoints (see Sink)."""

    state_key: str

    def state(self) -> dict[str, Any]: ...


class Session:
    """The Events implementation for one process of a run."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        run: Run,
        module: torch.nn.Module,
        bundle: DataBundle,
        folder: RunFolder,
        runlog: RunLog | None,
        reporter: Reporter,
        sinks: Sequence[Sink] = (),
        started_from: dict[str, Any] | None = None,
    ):
        self.cfg, self.run, self.module, self.bundle = cfg, run, module, bundle
        self.started_from = started_from  # model.init_from's record, kept in every checkpoint
        self.folder, self.runlog, self.reporter = folder, runlog, reporter
        self.ctx: DistContext = run.dist
        self.stop: StopRequest | None = None
        self.sinks = list(sinks) if self.ctx.is_main else []  # only rank 0 reports
        self.sink_stop: RunStopped | None = None  # a sink ended the run (e.g. a pruned sweep trial)

    # -- Events
    def log(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            self.runlog.write(record)
        self.reporter.record(record, self.run.epochs)
        for sink in self.sinks:
            try:
                sink.record(record)
            except RunStopped as stop:
                # stop after a checkpoint, as for a signal: the loop asks stop_requested right after
                self.sink_stop = self.sink_stop or stop

    def save(self, state: TrainState, is_best: bool) -> None:
        finite = torch.stack([p.detach().isfinite().all() for p in self.module.parameters()]).all()
        if not bool(finite):
            raise NonFiniteLossError(state.epoch + (state.batch > 0), state.step, float("nan"), what="weights")
        # each rank's generators, and its own losses of the epoch so far (the epoch's mean is
        # every rank's mean averaged: a resume needs each rank's, not rank 0's for all)
        gathered = self.ctx.gather((rng.capture(self.run.device), list(state.epoch_losses)))
        if self.ctx.is_main:
            assert self.runlog is not None and gathered is not None  # rank 0 has both
            offset = self.runlog.sync()
            rng_states, rank_losses = [g[0] for g in gathered], [g[1] for g in gathered]
            if self.sink_stop is not None:  # the run ends here on purpose: resume must not continue it
                state = dataclasses.replace(state, stopped_early=True, ended_by=self.sink_stop.status)
            trackers = {s.state_key: s.state() for s in self.sinks if isinstance(s, StatefulSink)}
            checkpoint = make_checkpoint(
                self.cfg,
                self.run,
                self.module,
                self.bundle,
                state,
                rng_states,
                offset,
                is_best,
                rank_losses,
                trackers,
                self.started_from,
            )
            path = self.folder.save(checkpoint, is_best)
            self._status("running", state)
            for sink in self.sinks:
                sink.checkpoint(path, is_best, state.step)
        self.ctx.barrier()  # nobody reads a checkpoint before it is complete

    def stop_requested(self, state: TrainState) -> bool:
        local = (self.stop is not None and self.stop.requested) or self.sink_stop is not None
        if not self.ctx.enabled:
            return local
        # Ranks agree every log_every steps and at epoch ends, so they all stop at the same step.
        if state.batch == 0 or state.step % self.run.log_every == 0:
            # agree on the signal too, so every rank ends the same way (SIGUSR1: exit 124 everywhere)
            mine = (self.stop.signum or 0) if self.stop is not None else 0
            signum = self.ctx.max(mine, self.run.device)
            if signum and self.stop is not None and self.stop.signum is None:
                self.stop.signum = signum
            return signum > 0
        return False

    def progress(self, epoch: int, total: int, start: int) -> Any:
        return self.reporter.progress(epoch, self.run.epochs, total, start)

    def eval_progress(self, total: int) -> Any:
        return self.reporter.eval_progress(total)

    # -- driving
    def _status(self, status: str, state: TrainState, message: str | None = None) -> None:
        write_status(
            self.folder.path,
            status,
            epoch=state.epoch,
            epochs=self.run.epochs,
            step=state.step,
            best_metric=state.best_metric,
            monitor=self.run.monitor[0],
            message=message,
            stopped_early=state.stopped_early,
            steps_per_epoch=math.ceil(len(self.run.train_batches) / self.run.accumulate),  # for `trainkit plot`
        )

    def fit(self, state: TrainState, records: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """Train from `state` to the end; `records` (e.g. a resume's "change" record) are
        logged first, where the run continues."""
        try:
            with StopRequest() as self.stop:
                if self.ctx.is_main:
                    self._status("running", state)
                for sink in self.sinks:
                    sink.start(self.folder.path, self.cfg.to_dict(), state.step)
                for record in records:
                    self.log(record)
                try:
                    fit(self.run, state, self)
                except StopTraining as stop:
                    if self.sink_stop is not None:
                        raise self.sink_stop from None
                    signum = self.stop.signum or 15  # other ranks stop because rank 0 did: SIGTERM
                    raise TrainingInterrupted.for_signal(signum, str(self.folder.path), stop.step) from None
        except TrainingInterrupted as exc:
            self._final("interrupted", state, str(exc))
            raise
        except RunStopped as exc:
            self._final(exc.status, state, str(exc))
            raise
        except BaseException as exc:
            self._final("failed", state, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        stopped = early_stop(self.cfg, state)
        self._final("complete", state, f"stopped early: {describe_early_stop(stopped)}" if stopped else None)
        return run_summary(self.folder, state, self.run.monitor[0], self.cfg, self.ctx.is_main)

    def _final(self, status: str, state: TrainState, message: str | None = None) -> None:
        if self.ctx.is_main:
            try:
                self._status(status, state, message)
            except CheckpointError:
                pass  # e.g. the disk is full: the original error is the one to report
            for sink in self.sinks:
                sink.finish(status, message)
            if self.runlog is not None:
                self.runlog.close()
