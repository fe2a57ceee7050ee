"""The Python API: train, resume, evaluate. The CLI is a thin layer over these.

    import trainkit
    result = trainkit.train("configs/mnist_cnn.yaml", overrides=["trainer.epochs=1"])
    metrics = trainkit.evaluate(result["best_checkpoint"])

Each returns plain data (dicts of numbers and strings) and raises TrainkitError
subclasses on failure. What a run changes in the process (cuDNN's flag, sys.path) is put
back when it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError

from trainkit import plugins
from trainkit.config import ExperimentConfig, dump_yaml, get_path, load_config, resolve
from trainkit.errors import CheckpointError, ConfigError, OutOfMemoryError, RunExistsError, UsageError
from trainkit.registry import SCHEDULERS
from trainkit.runfolder.checkpoint import Checkpoint, load_checkpoint
from trainkit.runfolder.fileio import atomic_write_text
from trainkit.runfolder.folder import RunFolder, checkpoint_file, open_for_resume
from trainkit.runfolder.runlog import RunLog
from trainkit.training.build import build, eval_batches, process_settings
from trainkit.training.distributed import DistContext, from_env, resolve_device
from trainkit.training.loop import TrainState
from trainkit.training.loop import evaluate as evaluate_model
from trainkit.training.progress import Reporter
from trainkit.training.restore import load_model_state, restore_training, train_state
from trainkit.training.session import Session, Sink

# What a resumed or evaluated run may not change: it would no longer be the same run.
FROZEN = (
    "name",
    "seed",
    "model",  # init_from and freeze too: they define where the run started and what it trains
    "data",
    "optimizer.name",
    "optimizer.param_groups",
    "optimizer.no_decay_norm_and_bias",
    "scheduler.name",
    "trainer.accumulate_grad_batches",
    "trainer.unfreeze_at_epoch",
)
CHANGEABLE = {"data.root", "data.download", "data.eval_batch_size"}

F = TypeVar("F", bound=Callable[..., Any])


def _api(fn: F) -> F:
    """Run an API call with the process settings put back after it, and running out of
    memory reported as trainkit's own error (the CLI maps it to one line and exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with process_settings():
                return fn(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError("out of device memory; lower data.batch_size or data.eval_batch_size") from None
        except MemoryError:
            raise OutOfMemoryError("out of host memory; lower data.batch_size or data.eval_batch_size") from None

    return wrapper  # type: ignore[return-value]


def _with_device(overrides: list[str] | tuple[str, ...], device: str | None) -> list[str]:
    return list(overrides) + ([f"trainer.device={device}"] if device else [])


def _load(config: str | Path | dict | ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        config = config.to_dict()
    if isinstance(config, dict):
        return resolve(config, overrides, source="config")
    return load_config(config, overrides)


def _check_frozen(saved: dict[str, Any], cfg: ExperimentConfig, source: Path) -> None:
    # keys added since the run was saved (model.freeze, ...) compare as their defaults
    try:
        saved = ExperimentConfig.model_validate(saved).to_dict()
    except ValidationError:
        pass  # compared as saved; resolve() has reported what is wrong with it
    new = cfg.to_dict()
    changed = []
    for key in FROZEN:
        old_value, new_value = get_path(saved, key), get_path(new, key)
        if isinstance(old_value, dict) and isinstance(new_value, dict):
            keys = set(old_value) | set(new_value)
            changed += [
                f"{key}.{k}"
                for k in sorted(keys)
                if f"{key}.{k}" not in CHANGEABLE and old_value.get(k) != new_value.get(k)
            ]
        elif old_value != new_value:
            changed.append(key)
    if changed:
        raise ConfigError(
            f"{', '.join(changed)}: cannot be changed for the run in {source} "
            "(it would no longer be the same run); start a new run with another name instead"
        )


def _saved_config(checkpoint: Checkpoint, source: Path, purpose: str) -> dict[str, Any]:
    checkpoint.require("config", source=source, purpose=purpose)
    plugins.require(checkpoint.plugins, f"checkpoint {source}")
    assert checkpoint.config is not None  # require() checked it
    return checkpoint.config


def _prepare_folder(folder: RunFolder, cfg: ExperimentConfig, overwrite: bool) -> None:
    if overwrite:
        folder.clear()
    folder.remove_stale_temps()
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create run folder {folder.path}: {exc.strerror or exc}") from None
    atomic_write_text(folder.config, dump_yaml(cfg.to_dict()))


@_api
def train(
    config: str | Path | dict | ExperimentConfig,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    device: str | None = None,
    quiet: bool = False,
    overwrite: bool = False,
    sinks: Sequence[Sink] = (),
) -> dict[str, Any]:
    """Train from a config file, dict or ExperimentConfig; returns the run's summary.

    `sinks` receive the run's records and checkpoints on rank 0 (see training.session.Sink)."""
    cfg = _load(config, _with_device(overrides, device))
    folder = RunFolder(cfg.run_dir, cfg.checkpoint.keep_last)
    if folder.holds_run() and not overwrite:
        raise RunExistsError(
            f"{folder.path} already holds a run; continue it with `trainkit resume {folder.path}`, "
            "choose another name (name=...), or pass --overwrite to replace it"
        )
    with from_env(cfg.trainer.device) as ctx:
        built = build(cfg, ctx, new_run=True)
        assert built.run is not None
        runlog = None
        if ctx.is_main:
            _prepare_folder(folder, cfg, overwrite)
            runlog = RunLog(folder.path, tensorboard=cfg.logging.tensorboard)
        ctx.barrier()
        reporter = Reporter(quiet, enabled=ctx.is_main)
        if ctx.enabled:
            batch = cfg.data.batch_size
            reporter.message(f"{ctx.world_size} processes x batch {batch} = effective batch {ctx.world_size * batch}")
        session = Session(
            cfg, built.run, built.module, built.bundle, folder, runlog, reporter, sinks, built.started_from
        )
        return session.fit(TrainState())


@_api
def resume(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    device: str | None = None,
    quiet: bool = False,
    sinks: Sequence[Sink] = (),
) -> dict[str, Any]:
    """Continue a run from its folder (newest good checkpoint) or from one checkpoint file."""
    source, checkpoint, skipped = open_for_resume(path)
    folder = RunFolder(source.parent)
    newest = folder.newest_step()
    if not Path(path).is_dir() and newest is not None and newest > checkpoint.step:
        raise UsageError(
            f"{source} (step {checkpoint.step}) is older than the newest checkpoint in {folder.path} "
            f"(step {newest}); resuming from it would discard the later history. "
            f"Resume the folder (`trainkit resume {folder.path}`) or copy the file to a new folder"
        )
    saved = _saved_config(checkpoint, source, "resume")
    checkpoint.require("optimizer", source=source, purpose="resume")
    cfg = resolve(saved, _with_device(overrides, device), source=str(source))
    _check_frozen(saved, cfg, source)
    saved_epochs = get_path(saved, "trainer.epochs")
    position = train_state(checkpoint, source)
    folder.keep_last = cfg.checkpoint.keep_last
    if cfg.trainer.epochs < checkpoint.epoch + (position.batch > 0):
        raise ConfigError(
            f"trainer.epochs: the run has already trained {checkpoint.epoch} epochs; "
            f"trainer.epochs={cfg.trainer.epochs} would shorten it",
            str(source),
        )
    if (
        cfg.trainer.epochs != saved_epochs
        and cfg.scheduler
        and SCHEDULERS.get(cfg.scheduler.name).traits.get("spans_run")
    ):
        raise ConfigError(
            f"trainer.epochs: scheduler '{cfg.scheduler.name}' was planned for {saved_epochs} epochs "
            "and cannot be stretched; start a new run to train longer",
            str(source),
        )
    if checkpoint.epoch >= cfg.trainer.epochs or position.stopped_early:
        why = "stopped early" if position.stopped_early else f"{checkpoint.epoch}/{cfg.trainer.epochs} epochs"
        raise UsageError(
            f"{folder.path} is already complete ({why}); "
            f"to train longer: trainkit resume {folder.path} trainer.epochs=N"
        )
    with from_env(cfg.trainer.device) as ctx:
        built = build(cfg, ctx, data_record=checkpoint.data_record)
        assert built.run is not None
        state = restore_training(checkpoint, built.run, built.module, str(source), cfg.data.batch_size)
        runlog = None
        ctx.barrier()  # every rank has read the checkpoint before rank 0 touches the folder
        if ctx.is_main:
            folder.remove_stale_temps()
            folder.quarantine(skipped)
            atomic_write_text(folder.config, dump_yaml(cfg.to_dict()))
            if checkpoint.is_best:  # a kill may have come between the checkpoint and best.pt
                folder.mark_best(source)
            runlog = RunLog(
                folder.path,
                truncate_to=checkpoint.metrics_offset,
                tensorboard=cfg.logging.tensorboard,
                purge_step=state.step,
            )
        ctx.barrier()
        reporter = Reporter(quiet, enabled=ctx.is_main)
        reporter.message(
            f"resuming {folder.path} from {source.name}: epoch {state.epoch + 1}, "
            f"batch {state.batch}, step {state.step}"
        )
        session = Session(
            cfg, built.run, built.module, built.bundle, folder, runlog, reporter, sinks, checkpoint.started_from
        )
        return session.fit(state)


@_api
def evaluate(
    checkpoint: str | Path,
    split: str = "test",
    overrides: list[str] | tuple[str, ...] = (),
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """Metrics of a checkpoint's model on its data set's test (or train) split."""
    if split not in ("test", "train"):
        raise UsageError(f"split must be 'test' or 'train', got '{split}'")
    path = checkpoint_file(checkpoint)
    loaded = load_checkpoint(path)
    saved = _saved_config(loaded, path, "evaluate")
    # Evaluation writes no event files (a run logged to TensorBoard evaluates without it),
    # and runs wherever it is asked to: a checkpoint trained on `cuda` evaluates on a laptop.
    overrides = ["logging.tensorboard=false", "trainer.device=auto", *_with_device(overrides, device)]
    cfg = resolve(saved, overrides, source=str(path))
    _check_frozen(saved, cfg, path)
    with from_env(cfg.trainer.device) as ctx:
        if cfg.trainer.precision == "fp16" and not _cuda_for(cfg, ctx):
            # trained with fp16 on a GPU, evaluated where fp16 is not offered
            cfg = cfg.with_values({"trainer.precision": "fp32"})
        built = build(cfg, ctx, training=False, data_record=loaded.data_record)
        load_model_state(built.module, loaded.model, str(path))
        batches = eval_batches(cfg, built.bundle, built.device, ctx, split)
        metrics = evaluate_model(
            built.module, batches, built.bundle.info.task, built.device, ctx, cfg.trainer.precision
        )
        return {"split": split, **metrics}


def _cuda_for(cfg: ExperimentConfig, ctx: DistContext) -> bool:
    return resolve_device(cfg.trainer.device, ctx).type == "cuda"
