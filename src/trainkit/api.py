"""The Python API: train, resume, evaluate. The CLI is a thin layer over these.

    import trainkit
    result = trainkit.train("configs/mnist_cnn.yaml", overrides=["trainer.epochs=1"])
    metrics = trainkit.evaluate(result["best_checkpoint"])

Each returns plain data (dicts of numbers and strings) and raises TrainkitError
subclasses on failure.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from trainkit import plugins, rng
from trainkit.checkpoint import RunFolder, checkpoint_file, load_checkpoint, open_for_resume
from trainkit.config import ExperimentConfig, get_path, load_config, resolve
from trainkit.distributed import DistContext, from_env, resolve_device
from trainkit.engine import build_model, build_run, checkpoint_payload, eval_batches, load_data, \
    load_model_state, prepare_device, restore_training
from trainkit.errors import CheckpointError, ConfigError, NonFiniteLossError, RunExistsError, \
    TrainingInterrupted, UsageError
from trainkit.fileio import atomic_write_text
from trainkit.loop import Run, TrainState, evaluate as evaluate_model, fit
from trainkit.optim import DEPENDS_ON_TOTAL
from trainkit.progress import Reporter
from trainkit.runlog import RunLog, read_records, write_status
from trainkit.signals import StopRequest
from trainkit.yamlio import dump_yaml

# What a resumed or evaluated run may not change: it would no longer be the same run.
FROZEN = ("name", "seed", "model", "data", "optimizer.name", "scheduler.name", "trainer.accumulate_grad_batches")
CHANGEABLE = {"data.root", "data.download", "data.eval_batch_size"}
RUN_FILES = ("last.pt", "best.pt", "latest.json", "config.yaml", "metrics.jsonl", "status.json")


def _with_device(overrides: list[str] | tuple[str, ...], device: str | None) -> list[str]:
    return list(overrides) + ([f"trainer.device={device}"] if device else [])


def _load(config: str | Path | dict | ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        config = config.to_dict()
    if isinstance(config, dict):
        return resolve(config, overrides, source="config")
    return load_config(config, overrides)


def _check_frozen(saved: dict[str, Any], cfg: ExperimentConfig, source: Path) -> None:
    new = cfg.to_dict()
    changed = []
    for key in FROZEN:
        old_value, new_value = get_path(saved, key), get_path(new, key)
        if isinstance(old_value, dict) and isinstance(new_value, dict):
            keys = set(old_value) | set(new_value)
            changed += [f"{key}.{k}" for k in sorted(keys) if f"{key}.{k}" not in CHANGEABLE
                        and old_value.get(k) != new_value.get(k)]
        elif old_value != new_value:
            changed.append(key)
    if changed:
        raise ConfigError(f"{', '.join(changed)}: cannot be changed for the run in {source} "
                          "(it would no longer be the same run); start a new run with another name instead")


class Session:
    """One process's part of a training run: the loop's Events, file writing on rank 0."""

    def __init__(self, cfg: ExperimentConfig, run: Run, module: torch.nn.Module, info: Any,
                 folder: RunFolder, runlog: RunLog | None, reporter: Reporter):
        self.cfg, self.run, self.module, self.info = cfg, run, module, info
        self.folder, self.runlog, self.reporter = folder, runlog, reporter
        self.ctx: DistContext = run.dist
        self.stop: StopRequest | None = None

    # -- Events
    def log(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            self.runlog.write(record)
        self.reporter.record(record, self.run.epochs)

    def save(self, state: TrainState, is_best: bool) -> None:
        finite = torch.stack([p.detach().isfinite().all() for p in self.module.parameters()]).all()
        if not bool(finite):
            raise NonFiniteLossError(state.epoch + (state.batch > 0), state.step, float("nan"), what="weights")
        rng_states = self.ctx.gather(rng.capture(self.run.device))
        if self.ctx.is_main:
            offset = self.runlog.sync()
            payload = checkpoint_payload(self.cfg, self.run, self.module, self.info, state, rng_states, offset, is_best)
            self.folder.save(payload, is_best)
            self._status("running", state)
        self.ctx.barrier()  # nobody reads a checkpoint before it is complete

    def stop_requested(self, state: TrainState) -> bool:
        local = self.stop is not None and self.stop.requested
        if not self.ctx.enabled:
            return local
        # Ranks agree every log_every steps and at epoch ends, so they all stop at the same step.
        if state.batch == 0 or state.step % self.run.log_every == 0:
            return self.ctx.any(local, self.run.device)
        return False

    def interrupted(self, state: TrainState, saved: bool = False) -> None:
        if not saved:
            self.save(state, False)
        signum = (self.stop.signum if self.stop else None) or 15
        raise TrainingInterrupted(signum, str(self.folder.path), state.step)

    def progress(self, epoch: int, total: int, start: int) -> Any:
        return self.reporter.progress(epoch, self.run.epochs, total, start)

    # -- driving
    def _status(self, status: str, state: TrainState, message: str | None = None) -> None:
        write_status(self.folder.path, status, epoch=state.epoch, epochs=self.run.epochs, step=state.step,
                     best_metric=state.best_metric, monitor=self.run.monitor[0], message=message)

    def fit(self, state: TrainState) -> dict[str, Any]:
        try:
            with StopRequest() as self.stop:
                if self.ctx.is_main:
                    self._status("running", state)
                fit(self.run, state, self)
        except TrainingInterrupted as exc:
            self._final("interrupted", state, str(exc))
            raise
        except BaseException as exc:
            self._final("failed", state, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        self._final("complete", state)
        history = read_records(self.folder.path, "epoch") if self.ctx.is_main else []
        return {"run_dir": str(self.folder.path), "epochs": state.epoch, "step": state.step,
                "best_metric": state.best_metric, "best_epoch": state.best_epoch, "monitor": self.run.monitor[0],
                "stopped_early": state.stopped_early, "final": history[-1] if history else {},
                "history": history, "last_checkpoint": str(self.folder.last),
                "best_checkpoint": str(self.folder.best)}

    def _final(self, status: str, state: TrainState, message: str | None = None) -> None:
        if self.ctx.is_main:
            try:
                self._status(status, state, message)
            except CheckpointError:
                pass  # e.g. the disk is full: the original error is the one to report
            if self.runlog is not None:
                self.runlog.close()


def _prepare_folder(folder: RunFolder, cfg: ExperimentConfig, overwrite: bool) -> None:
    if overwrite:
        for name in RUN_FILES:
            (folder.path / name).unlink(missing_ok=True)
        for _, path in folder.step_files():
            path.unlink()
        shutil.rmtree(folder.path / "tensorboard", ignore_errors=True)
    folder.remove_stale_temps()
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create run folder {folder.path}: {exc.strerror or exc}") from None
    atomic_write_text(folder.path / "config.yaml", dump_yaml(cfg.to_dict()))


def train(config: str | Path | dict | ExperimentConfig, overrides: list[str] | tuple[str, ...] = (), *,
          device: str | None = None, quiet: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train from a config file, dict or ExperimentConfig; returns the run's summary."""
    cfg = _load(config, _with_device(overrides, device))
    folder = RunFolder(cfg.run_dir, cfg.checkpoint.keep_last)
    if folder.holds_run() and not overwrite:
        raise RunExistsError(f"{folder.path} already holds a run; continue it with `trainkit resume {folder.path}`, "
                             "choose another name (name=...), or pass --overwrite to replace it")
    with from_env(cfg.trainer.device) as ctx:
        dev = resolve_device(cfg.trainer.device, ctx)
        prepare_device(cfg, dev)
        rng.seed_everything(cfg.seed)
        bundle = load_data(cfg)
        module = build_model(cfg, bundle.info, dev)
        run = build_run(cfg, bundle, module, dev, ctx)
        if ctx.rank > 0:  # same initial weights everywhere (DDP broadcasts them), own dropout masks
            rng.seed_everything(cfg.seed + ctx.rank)
        runlog = None
        if ctx.is_main:
            _prepare_folder(folder, cfg, overwrite)
            runlog = RunLog(folder.path, tensorboard=cfg.logging.tensorboard)
        ctx.barrier()
        reporter = Reporter(quiet, enabled=ctx.is_main)
        if ctx.enabled:
            batch = cfg.data.batch_size
            reporter.message(f"{ctx.world_size} processes x batch {batch} = effective batch {ctx.world_size * batch}")
        return Session(cfg, run, module, bundle.info, folder, runlog, reporter).fit(TrainState())


def resume(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, device: str | None = None,
           quiet: bool = False) -> dict[str, Any]:
    """Continue a run from its folder (newest good checkpoint) or from one checkpoint file."""
    source, ckpt, skipped = open_for_resume(path)
    folder = RunFolder(source.parent)
    newest = folder.newest_step()
    if not Path(path).is_dir() and newest is not None and newest > ckpt["step"]:
        raise UsageError(f"{source} (step {ckpt['step']}) is older than the newest checkpoint in {folder.path} "
                         f"(step {newest}); resuming from it would discard the later history. "
                         f"Resume the folder (`trainkit resume {folder.path}`) or copy the file to a new folder")
    plugins.require(ckpt.get("plugins", []), f"checkpoint {source}")
    cfg = resolve(ckpt["config"], _with_device(overrides, device), source=str(source))
    _check_frozen(ckpt["config"], cfg, source)
    saved_epochs, state = ckpt["config"]["trainer"]["epochs"], ckpt["state"]
    folder.keep_last = cfg.checkpoint.keep_last
    if cfg.trainer.epochs < ckpt["epoch"] + (state["batch"] > 0):
        raise ConfigError(f"trainer.epochs: the run has already trained {ckpt['epoch']} epochs; "
                          f"trainer.epochs={cfg.trainer.epochs} would shorten it", str(source))
    if cfg.trainer.epochs != saved_epochs and cfg.scheduler and cfg.scheduler.name in DEPENDS_ON_TOTAL:
        raise ConfigError(f"trainer.epochs: scheduler '{cfg.scheduler.name}' was planned for {saved_epochs} epochs "
                          "and cannot be stretched; start a new run to train longer", str(source))
    if ckpt["epoch"] >= cfg.trainer.epochs or state.get("stopped_early"):
        why = "stopped early" if state.get("stopped_early") else f"{ckpt['epoch']}/{cfg.trainer.epochs} epochs"
        raise UsageError(f"{folder.path} is already complete ({why}); "
                         f"to train longer: trainkit resume {folder.path} trainer.epochs=N")
    with from_env(cfg.trainer.device) as ctx:
        dev = resolve_device(cfg.trainer.device, ctx)
        prepare_device(cfg, dev)
        bundle = load_data(cfg)
        module = build_model(cfg, bundle.info, dev)
        run = build_run(cfg, bundle, module, dev, ctx)
        train_state = restore_training(ckpt, run, module, str(source), cfg.data.batch_size)
        runlog = None
        ctx.barrier()  # every rank has read the checkpoint before rank 0 touches the folder
        if ctx.is_main:
            folder.remove_stale_temps()
            folder.quarantine(skipped)
            atomic_write_text(folder.path / "config.yaml", dump_yaml(cfg.to_dict()))
            if ckpt.get("is_best"):  # a kill may have come between the checkpoint and best.pt
                folder.mark_best(source)
            runlog = RunLog(folder.path, truncate_to=ckpt["metrics_offset"], tensorboard=cfg.logging.tensorboard,
                            purge_step=train_state.step)
        ctx.barrier()
        reporter = Reporter(quiet, enabled=ctx.is_main)
        reporter.message(f"resuming {folder.path} from {source.name}: epoch {train_state.epoch + 1}, "
                         f"batch {train_state.batch}, step {train_state.step}")
        return Session(cfg, run, module, bundle.info, folder, runlog, reporter).fit(train_state)


def evaluate(checkpoint: str | Path, split: str = "test", overrides: list[str] | tuple[str, ...] = (), *,
             device: str | None = None) -> dict[str, Any]:
    """Metrics of a checkpoint's model on its data set's test (or train) split."""
    if split not in ("test", "train"):
        raise UsageError(f"split must be 'test' or 'train', got '{split}'")
    path = checkpoint_file(checkpoint)
    ckpt = load_checkpoint(path)
    plugins.require(ckpt.get("plugins", []), f"checkpoint {path}")
    # Evaluation writes no event files (a run logged to TensorBoard evaluates without it),
    # and runs wherever it is asked to: a checkpoint trained on `cuda` evaluates on a laptop.
    overrides = ["logging.tensorboard=false", "trainer.device=auto", *_with_device(overrides, device)]
    cfg = resolve(ckpt["config"], overrides, source=str(path))
    _check_frozen(ckpt["config"], cfg, path)
    with from_env(cfg.trainer.device) as ctx:
        dev = resolve_device(cfg.trainer.device, ctx)
        if cfg.trainer.precision == "fp16" and dev.type != "cuda":
            cfg.trainer.precision = "fp32"  # trained with fp16 on a GPU, evaluated where fp16 is not offered
        prepare_device(cfg, dev)
        bundle = load_data(cfg)
        module = build_model(cfg, bundle.info, dev)
        load_model_state(module, ckpt["model"], str(path))
        batches = eval_batches(cfg, bundle, dev, ctx, split)
        metrics = evaluate_model(module, batches, bundle.info.task, dev, ctx, cfg.trainer.precision)
        return {"split": split, **metrics}
