"""The Python API: train, resume, evaluate, sweep. The CLI is a thin layer over these.

    import trainkit
    result = trainkit.train("configs/mnist_cnn.yaml", overrides=["trainer.epochs=1"])
    metrics = trainkit.evaluate(result["best_checkpoint"])

Each returns plain data (dicts of numbers and strings) and raises TrainkitError
subclasses on failure. What a run changes in the process (cuDNN's flag, sys.path) is put
back when it returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import ValidationError

from trainkit import plugins
from trainkit.config import ExperimentConfig, dump_yaml, get_path, load_config, resolve
from trainkit.errors import CheckpointError, ConfigError, OutOfMemoryError, UsageError
from trainkit.runfolder import lock
from trainkit.runfolder.checkpoint import Checkpoint, load_checkpoint
from trainkit.runfolder.fileio import atomic_write_text
from trainkit.runfolder.folder import RunFolder, check_writable_folder, checkpoint_file, open_for_resume
from trainkit.runfolder.runlog import RunLog
from trainkit.tracking import sinks_for
from trainkit.training.build import build, eval_batches, process_settings
from trainkit.training.distributed import DistContext, from_env, resolve_device
from trainkit.training.loop import TrainState
from trainkit.training.loop import evaluate as evaluate_model
from trainkit.training.progress import Reporter
from trainkit.training.restore import load_model_state, require_plugins, restore_training, train_state
from trainkit.training.resume_plan import (
    check_new_run,
    continue_early_stopping,
    existing_run,
    plan_resume,
    resume_base,
)
from trainkit.training.retune import apply_changes, change_record, describe_changes
from trainkit.training.session import Session, Sink, run_summary
from trainkit.training.startline import start_line

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
# A resume may give the run a new schedule (resume_plan.py checks and records it).
RESUME_FROZEN = tuple(key for key in FROZEN if key != "scheduler.name")
# Where the data is read from and how, not what it is: a resume or eval may change these.
# (on_bad_file: error -> skip lets a run stopped by a bad file go on; it changes nothing before that file.)
CHANGEABLE = {
    "data.root",
    "data.download",
    "data.eval_batch_size",
    "data.num_workers",
    "data.cache",
    "data.cache_dir",
    "data.on_bad_file",
    "data.path",
    "data.test_path",
}

F = TypeVar("F", bound=Callable[..., Any])
_held: contextvars.ContextVar[contextlib.ExitStack] = contextvars.ContextVar("trainkit_held")


def _api(fn: F) -> F:
    """Run an API call with the process settings put back after it, the run folder locks it
    took released, and running out of memory reported as trainkit's own error (the CLI maps
    it to one line and exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with process_settings(), contextlib.ExitStack() as held:
                token = _held.set(held)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _held.reset(token)
        except torch.OutOfMemoryError:
            raise OutOfMemoryError("out of device memory; lower data.batch_size or data.eval_batch_size") from None
        except MemoryError:
            raise OutOfMemoryError("out of host memory; lower data.batch_size or data.eval_batch_size") from None
        except RuntimeError as exc:
            failed = _host_allocation(exc)
            if failed is None:
                raise
            raise OutOfMemoryError(
                f"out of host memory (allocating {failed} failed); lower data.batch_size or data.eval_batch_size"
            ) from None

    return wrapper  # type: ignore[return-value]


def _host_allocation(exc: RuntimeError) -> str | None:
    """The size torch's CPU allocator failed to get ("12.3 GB"), when `exc` is that failure:
    a RuntimeError, not a MemoryError."""
    text = str(exc)
    if "DefaultCPUAllocator: can't allocate memory" not in text:
        return None
    found = re.search(r"allocate (\d+) bytes", text)
    return f"{int(found.group(1)) / 1e9:,.1f} GB" if found else "memory"


def _lock(run_dir: Path) -> None:
    """Hold the run folder's lock until this API call returns (runfolder/lock.py). Under
    torchrun only rank 0 writes the folder, so only rank 0 holds it."""
    if os.environ.get("RANK", "0") == "0":
        _held.get().enter_context(lock.hold(run_dir))


def _with_device(overrides: list[str] | tuple[str, ...], device: str | None) -> list[str]:
    return list(overrides) + ([f"trainer.device={device}"] if device else [])


def _device_label(device: str | None) -> dict[str, str]:
    """Messages name the `device=` argument, not an override the user never typed."""
    return {f"trainer.device={device}": f"device={device!r}"} if device else {}


def _load(
    config: str | Path | dict | ExperimentConfig, overrides: list[str], labels: dict[str, str] | None = None
) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        config = config.to_dict()
    if isinstance(config, dict):
        return resolve(config, overrides, source="config", labels=labels)
    return load_config(config, overrides, labels=labels)


def _check_frozen(saved: dict[str, Any], cfg: ExperimentConfig, source: Path, frozen: tuple[str, ...] = FROZEN) -> None:
    # keys added since the run was saved (model.freeze, ...) compare as their defaults
    try:
        saved = ExperimentConfig.model_validate(saved).to_dict()
    except ValidationError:
        pass  # compared as saved; resolve() has reported what is wrong with it
    new = cfg.to_dict()
    changed = []
    for key in frozen:
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


def _saved_config(
    checkpoint: Checkpoint, source: Path, purpose: str, imports: Sequence[str], trust_plugins: bool
) -> dict[str, Any]:
    checkpoint.require("config", source=source, purpose=purpose)
    require_plugins(checkpoint, source, imports, trust_plugins)
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
    imports: Sequence[str] = (),
    dry_run: bool = False,
) -> dict[str, Any]:
    """Train from a config file, dict or ExperimentConfig; returns the run's summary.

    `sinks` receive the run's records and checkpoints on rank 0 (see training.session.Sink).
    `imports`: modules to import first (they may register components), beside the config's
    own `imports:`. `dry_run`: check what training would need (config, run folder, device)
    and return {"run_dir", "config"} without training."""
    plugins.import_user_modules(imports)
    cfg = _load(config, _with_device(overrides, device), _device_label(device))
    check_new_run(cfg)
    folder = RunFolder(cfg.run_dir, cfg.checkpoint.keep_last)
    _lock(folder.path)
    if folder.holds_run() and not overwrite:
        raise existing_run(folder)
    check_writable_folder(folder.path)
    if dry_run:
        return {"run_dir": str(folder.path), "config": cfg.to_dict()}
    with from_env(cfg.trainer.device) as ctx:
        built = build(cfg, ctx, new_run=True)
        assert built.run is not None
        runlog = None
        if ctx.is_main:
            _prepare_folder(folder, cfg, overwrite)
            runlog = RunLog(folder.path, tensorboard=cfg.logging.tensorboard)
        ctx.barrier()
        reporter = Reporter(quiet, enabled=ctx.is_main)
        reporter.message(start_line(cfg, built.device, built.module, built.bundle, ctx))
        sinks = [*sinks, *sinks_for(cfg)]
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
    imports: Sequence[str] = (),
    trust_plugins: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Continue a run from its folder (newest good checkpoint) or from one checkpoint file.

    Plugin modules the checkpoint names are imported only with your leave: `imports`
    (modules you name) or `trust_plugins=True` (see trainkit.plugins.require). Overrides of the
    optimizer's options or the schedule apply from the next step on (see
    training/resume_plan.py, retune.py); a run with nothing left to train returns at once with
    `already_complete` True and a `message` saying how to train it longer. `dry_run`: check
    everything resuming needs and return {"run_dir", "config"} without training."""
    if Path(path).exists():
        _lock(Path(path) if Path(path).is_dir() else Path(path).parent)
    source, checkpoint, skipped = open_for_resume(path)
    folder = RunFolder(source.parent)
    newest = folder.newest_step()
    if not Path(path).is_dir() and newest is not None and newest > checkpoint.step:
        raise UsageError(
            f"{source} (step {checkpoint.step}) is older than the newest checkpoint in {folder.path} "
            f"(step {newest}); resuming from it would discard the later history. "
            f"Resume the folder (`trainkit resume {folder.path}`) or copy the file to a new folder"
        )
    loaded = (source, checkpoint, skipped)
    return _continue(loaded, overrides, device, quiet, sinks, imports, trust_plugins, dry_run)


def _continue(
    loaded: tuple[Path, Checkpoint, list[Path]],
    overrides: list[str] | tuple[str, ...],
    device: str | None,
    quiet: bool,
    sinks: Sequence[Sink],
    imports: Sequence[str],
    trust_plugins: bool,
    dry_run: bool,
) -> dict[str, Any]:
    """`resume` from a loaded checkpoint: (its file, the checkpoint, damaged newer files skipped)."""
    source, checkpoint, skipped = loaded
    folder = RunFolder(source.parent)
    saved = _saved_config(checkpoint, source, "resume", imports, trust_plugins)
    checkpoint.require("optimizer", source=source, purpose="resume")
    base = resume_base(saved, overrides)
    cfg = resolve(base, _with_device(overrides, device), source=str(source), labels=_device_label(device))
    _check_frozen(saved, cfg, source, RESUME_FROZEN)
    position = train_state(checkpoint, source)
    folder.keep_last = cfg.checkpoint.keep_last
    plan = plan_resume(saved, cfg, overrides, position, str(folder.path), str(source))
    cfg = plan.cfg
    if plan.complete:
        task = (checkpoint.data_info or {}).get("task")
        result = run_summary(folder, position, "val_accuracy" if task == "classification" else "val_loss", cfg)
        return {**result, "already_complete": True, "message": f"{folder.path} is already complete {plan.complete}"}
    if dry_run:
        return {"run_dir": str(folder.path), "config": cfg.to_dict()}
    with from_env(cfg.trainer.device) as ctx:
        built = build(cfg, ctx, data_record=checkpoint.data_record)
        assert built.run is not None
        state = restore_training(
            checkpoint, built.run, built.module, str(source), cfg.data.batch_size, load_scheduler=not plan.retune
        )
        apply_changes(plan, saved, built.run, built.module, checkpoint.scheduler, state, str(source))
        continue_early_stopping(saved, cfg, state)
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
        reporter.message(start_line(cfg, built.device, built.module, built.bundle, ctx))
        reporter.message(
            f"resuming {folder.path} from {source.name}: epoch {state.epoch + 1}, "
            f"batch {state.batch}, step {state.step}"
        )
        sinks = [*sinks, *sinks_for(cfg, checkpoint.trackers)]
        record = change_record(plan, state, built.run)
        if record:
            reporter.message(f"changed {describe_changes(record)}")
        session = Session(
            cfg, built.run, built.module, built.bundle, folder, runlog, reporter, sinks, checkpoint.started_from
        )
        return session.fit(state, [record] if record else [])


def _changes(old: Any, new: Any, key: str = "") -> list[str]:
    """Overrides that turn config `old` into `new` (values as JSON, which YAML reads as is)."""
    if old == new:
        return []
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [f"{key}={json.dumps(new)}"]
    dotted = (key + ".") if key else ""
    changes = [f"~{dotted}{k}" for k in old if k not in new]
    for k, value in new.items():
        changes += _changes(old.get(k), value, dotted + k) if k in old else [f"{dotted}{k}={json.dumps(value)}"]
    return changes


@_api
def auto_resume(
    config: str | Path | dict | ExperimentConfig,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    device: str | None = None,
    quiet: bool = False,
    sinks: Sequence[Sink] = (),
    imports: Sequence[str] = (),
    trust_plugins: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Train, continue, or leave alone the run of this config, whichever is due: the one command
    for a job that a cluster may stop and restart any number of times (`train --auto-resume`).

    No checkpoint yet: train (again from the start, if an earlier try died before its first
    checkpoint). Checkpoints: resume from the newest, exactly, with the settings of `config`
    (which must describe the same run; a larger trainer.epochs extends it). Nothing left to
    train: return at once with `already_complete` True, as `resume` does. `imports`,
    `trust_plugins` and `dry_run` as for `train` and `resume`."""
    plugins.import_user_modules(imports)
    cfg = _load(config, _with_device(overrides, device), _device_label(device))
    folder = RunFolder(cfg.run_dir, cfg.checkpoint.keep_last)
    _lock(folder.path)  # held from the decision through the training, so nobody else decides meanwhile
    if not folder.step_files() and not folder.last.exists():
        overwrite = folder.holds_run()
        return train(cfg, quiet=quiet, overwrite=overwrite, sinks=sinks, imports=imports, dry_run=dry_run)
    loaded = folder.load_latest()
    source, checkpoint, _ = loaded
    imports = [*imports, *cfg.imports]  # the user's own config names them: their leave to import
    saved = _saved_config(checkpoint, source, "resume", imports, trust_plugins)
    _check_frozen(saved, cfg, source, RESUME_FROZEN)
    changes = _changes(saved, cfg.to_dict())
    # the checkpoint just read is the one to resume from: not read a second time
    return _continue(loaded, changes, None, quiet, sinks, imports, trust_plugins, dry_run)


@_api
def evaluate(
    checkpoint: str | Path,
    split: str = "test",
    overrides: list[str] | tuple[str, ...] = (),
    *,
    device: str | None = None,
    imports: Sequence[str] = (),
    trust_plugins: bool = False,
) -> dict[str, Any]:
    """Metrics of a checkpoint's model on its data set's test (or train) split.

    Plugin modules the checkpoint names are imported only with your leave: `imports`
    (modules you name) or `trust_plugins=True` (see trainkit.plugins.require)."""
    if split not in ("test", "train"):
        raise UsageError(f"split must be 'test' or 'train', got '{split}'")
    path = checkpoint_file(checkpoint)
    loaded = load_checkpoint(path)
    saved = _saved_config(loaded, path, "evaluate", imports, trust_plugins)
    # Evaluation writes no event files and tracks nothing (a run logged to TensorBoard or MLflow
    # evaluates without them), and runs wherever it is asked to: a checkpoint trained on `cuda`
    # evaluates on a laptop.
    overrides = [
        "logging.tensorboard=false",
        "logging.mlflow=false",
        "trainer.device=auto",
        *_with_device(overrides, device),
    ]
    cfg = resolve(saved, overrides, source=str(path), labels=_device_label(device))
    _check_frozen(saved, cfg, path)
    with from_env(cfg.trainer.device) as ctx:
        if cfg.trainer.precision == "fp16" and not _cuda_for(cfg, ctx):
            # trained with fp16 on a GPU, evaluated where fp16 is not offered
            cfg = cfg.with_values({"trainer.precision": "fp32"})
        built = build(cfg, ctx, training=False, data_record=loaded.data_record)
        load_model_state(built.module, loaded.model, str(path))
        batches = eval_batches(cfg, built.bundle, built.device, ctx, split)
        bar = Reporter(enabled=ctx.is_main).eval_progress(len(batches))  # a bar on a terminal only
        metrics = evaluate_model(
            built.module, batches, built.bundle.info.task, built.device, ctx, cfg.trainer.precision, bar
        )
        return {"split": split, **metrics}


def _cuda_for(cfg: ExperimentConfig, ctx: DistContext) -> bool:
    return resolve_device(cfg.trainer.device, ctx).type == "cuda"


def sweep(
    sweep_file: str | Path, overrides: list[str] | tuple[str, ...] = (), *, jobs: int = 1, storage: str | None = None
) -> dict[str, Any]:
    """Run or continue the sweep a sweep file describes (needs trainkit[sweep]); returns its
    summary: {"best": {...}, "trials": [{"number", "state", "params", "value", "run_dir"}, ...]}."""
    from trainkit.sweeps.driver import run_sweep

    return run_sweep(sweep_file, overrides, jobs=jobs, storage=storage)
