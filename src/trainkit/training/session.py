"""One process's part of a training run: the loop's `Events`, with files written by rank 0.

The loop only calls log / save / stop_requested / progress; this is where those become
metrics.jsonl records, checkpoints in the run folder, status.json and a stop agreed by
every rank.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from trainkit import plugins
from trainkit._version import __version__
from trainkit.config import ExperimentConfig
from trainkit.errors import CheckpointError, NonFiniteLossError, TrainingInterrupted
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
        world_size=run.dist.world_size,
        data_info=dataclasses.asdict(bundle.info),
        data_record=bundle.record,
        metrics_offset=metrics_offset,
        started_from=started_from,
        saved_at=time.time(),
    )


class Sink(Protocol):
    """Something besides the run folder that receives a run's events on rank 0: a tracker
    (MLflow), a sweep's pruner. A sink never changes what is trained; it may end the run by
    raising a TrainkitError from `record` (the run then stops as failed with that message,
    unless the caller handles the error type)."""

    def start(self, run_dir: Path, config: dict[str, Any], step: int) -> None: ...
    def record(self, record: dict[str, Any]) -> None: ...
    def checkpoint(self, path: Path, is_best: bool, step: int) -> None: ...
    def finish(self, status: str, message: str | None) -> None: ...


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

    # -- Events
    def log(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            self.runlog.write(record)
        self.reporter.record(record, self.run.epochs)
        for sink in self.sinks:
            sink.record(record)

    def save(self, state: TrainState, is_best: bool) -> None:
        finite = torch.stack([p.detach().isfinite().all() for p in self.module.parameters()]).all()
        if not bool(finite):
            raise NonFiniteLossError(state.epoch + (state.batch > 0), state.step, float("nan"), what="weights")
        rng_states = self.ctx.gather(rng.capture(self.run.device))
        if self.ctx.is_main:
            assert self.runlog is not None and rng_states is not None  # rank 0 has both
            offset = self.runlog.sync()
            checkpoint = make_checkpoint(
                self.cfg, self.run, self.module, self.bundle, state, rng_states, offset, is_best, self.started_from
            )
            path = self.folder.save(checkpoint, is_best)
            self._status("running", state)
            for sink in self.sinks:
                sink.checkpoint(path, is_best, state.step)
        self.ctx.barrier()  # nobody reads a checkpoint before it is complete

    def stop_requested(self, state: TrainState) -> bool:
        local = self.stop is not None and self.stop.requested
        if not self.ctx.enabled:
            return local
        # Ranks agree every log_every steps and at epoch ends, so they all stop at the same step.
        if state.batch == 0 or state.step % self.run.log_every == 0:
            return self.ctx.any(local, self.run.device)
        return False

    def progress(self, epoch: int, total: int, start: int) -> Any:
        return self.reporter.progress(epoch, self.run.epochs, total, start)

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
        )

    def fit(self, state: TrainState) -> dict[str, Any]:
        try:
            with StopRequest() as self.stop:
                if self.ctx.is_main:
                    self._status("running", state)
                for sink in self.sinks:
                    sink.start(self.folder.path, self.cfg.to_dict(), state.step)
                try:
                    fit(self.run, state, self)
                except StopTraining as stop:
                    signum = self.stop.signum or 15  # other ranks stop because rank 0 did: SIGTERM
                    raise TrainingInterrupted(signum, str(self.folder.path), stop.step) from None
        except TrainingInterrupted as exc:
            self._final("interrupted", state, str(exc))
            raise
        except BaseException as exc:
            self._final("failed", state, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        self._final("complete", state)
        history = read_records(self.folder.path, "epoch") if self.ctx.is_main else []
        return {
            "run_dir": str(self.folder.path),
            "epochs": state.epoch,
            "step": state.step,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "monitor": self.run.monitor[0],
            "stopped_early": state.stopped_early,
            "final": history[-1] if history else {},
            "history": history,
            "last_checkpoint": str(self.folder.last),
            "best_checkpoint": str(self.folder.best),
        }

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
