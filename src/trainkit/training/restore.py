"""Checkpoint -> built components: weights into a model, training state into a Run.

The reverse direction (components -> Checkpoint) is in session.py; the format itself is
defined in runfolder/checkpoint.py.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainkit import plugins
from trainkit.config import ExperimentConfig, resolve
from trainkit.errors import CheckpointError, one_line
from trainkit.runfolder.checkpoint import Checkpoint, load_checkpoint
from trainkit.runfolder.folder import checkpoint_file
from trainkit.training import rng, statecheck
from trainkit.training.build import build_model
from trainkit.training.data import DatasetInfo
from trainkit.training.initweights import clean_keys
from trainkit.training.loop import Run, TrainState

log = logging.getLogger("trainkit")
CPU = torch.device("cpu")
# Rebuilding a model needs none of the logging machinery the run was trained with, and its
# weights in the standard layout: channels-last weights are not contiguous, and torch.export
# saves such a tensor as a view it warns about ("No complete tensor found in the group").
REBUILD_OVERRIDES = [
    "logging.tensorboard=false",
    "logging.mlflow=false",
    "trainer.device=cpu",
    "trainer.channels_last=false",
]


def load_model_state(module: torch.nn.Module, state_dict: dict[str, Any], source: str) -> None:
    """load_state_dict, with a mismatch explained in terms of the architecture."""
    state_dict = clean_keys(state_dict)
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} is {_shape(v)} in the checkpoint but {tuple(own[k].shape)} in the model"
        for k, v in state_dict.items()
        if k in own and _shape(v) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        details = (
            mismatched[:3]
            + ([f"missing keys {missing[:3]}"] if missing else [])
            + ([f"unexpected keys {unexpected[:3]}"] if unexpected else [])
        )
        raise CheckpointError(f"{source} was written by a different model architecture: {'; '.join(details)}")
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a dtype torch cannot copy
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{source}: the weights do not load into the model ({first})") from None


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def train_state(checkpoint: Checkpoint, source: str | Path) -> TrainState:
    """The loop's state from a checkpoint, each field checked (a hand-edited file is one error)."""
    try:
        return TrainState.from_dict(checkpoint.state)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: damaged loop state in the checkpoint ({exc})") from None


def restore_training(
    checkpoint: Checkpoint,
    run: Run,
    module: torch.nn.Module,
    source: str,
    batch_size: int,
    load_scheduler: bool = True,
) -> TrainState:
    """Model, optimizer, scheduler, scaler and RNG from a checkpoint; returns the loop state.

    `load_scheduler=False` when the resume changes the schedule (retune.py sets its state)."""
    load_model_state(module, checkpoint.model, source)
    state = train_state(checkpoint, source)
    started = state.epoch if state.batch > 0 else state.epoch - 1  # the last epoch begun
    if run.before_epoch is not None and started >= 0:
        run.before_epoch(run, started)  # e.g. an unfreeze: the optimizer's layout as it was saved
    # what a fresh run has, to compare the loaded hyper-parameters with (statecheck.py)
    fresh_groups = run.optimizer.state_dict()["param_groups"]
    fresh_scheduler = run.scheduler.state_dict() if run.scheduler is not None else None
    fresh_scaler = run.scaler.state_dict() if run.scaler is not None else None
    before = list(statecheck.param_state_problems(run.optimizer, checkpoint.optimizer))
    if before:
        raise CheckpointError(f"{source}: optimizer or scheduler state does not fit this run: {_some(before)}")
    try:
        run.optimizer.load_state_dict(checkpoint.optimizer or {})
        if load_scheduler and run.scheduler is not None and checkpoint.scheduler is not None:
            run.scheduler.load_state_dict(checkpoint.scheduler)
        if run.scaler is not None and checkpoint.scaler:
            run.scaler.load_state_dict(checkpoint.scaler)
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as exc:
        first = one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise CheckpointError(f"{source}: optimizer or scheduler state does not fit this run ({first})") from None
    problems = list(statecheck.same_kinds(fresh_groups, run.optimizer.state_dict()["param_groups"], "param_groups"))
    if fresh_scheduler is not None and checkpoint.scheduler is not None:
        problems += statecheck.same_kinds(fresh_scheduler, checkpoint.scheduler, "scheduler", missing_ok=True)
    if fresh_scaler is not None and checkpoint.scaler:
        problems += statecheck.same_kinds(fresh_scaler, checkpoint.scaler, "scaler", missing_ok=True)
    problems += statecheck.param_state_problems(run.optimizer)
    if problems:
        raise CheckpointError(f"{source}: optimizer or scheduler state does not fit this run: {_some(problems)}")
    saved_world = checkpoint.world_size
    ctx = run.dist
    if saved_world != ctx.world_size and state.batch:
        # The global order is one permutation; skipping the first k*B*W positions of it is
        # exact for any W, so keep the sample position, rounded down to a whole batch.
        samples = state.batch * batch_size * saved_world
        state.batch = samples // (batch_size * ctx.world_size)
        state.epoch_losses = state.epoch_losses[: state.batch]
        state.logged_batch = min(state.logged_batch, state.batch)
        log.warning(
            "resuming a %d-process checkpoint with %d processes: the run continues from the same sample "
            "of the epoch but is not bit-identical to an uninterrupted run",
            saved_world,
            ctx.world_size,
        )
    if saved_world == ctx.world_size and ctx.rank < len(checkpoint.rank_losses):
        own = checkpoint.rank_losses[ctx.rank]
        if not (isinstance(own, list) and len(own) == len(state.epoch_losses) and all(_is_float(v) for v in own)):
            raise CheckpointError(f"{source}: damaged loop state in the checkpoint (rank_losses)")
        state.epoch_losses = [float(v) for v in own]
    states = checkpoint.rng
    if ctx.rank < len(states) and saved_world == ctx.world_size:
        try:
            rng.restore(states[ctx.rank], run.device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:
            raise CheckpointError(f"{source}: damaged random-generator state ({type(exc).__name__})") from None
    else:
        seed = (checkpoint.config or {}).get("seed", 0)
        rng.seed_everything(int(seed) + ctx.rank + state.step)
    return state


def _some(problems: list[str]) -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return one_line(shown)


def _is_float(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def dataset_info(checkpoint: Checkpoint, source: Path) -> DatasetInfo:
    raw = checkpoint.data_info
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: has no data set description (data_info); it predates this trainkit")
    known = {f.name for f in dataclasses.fields(DatasetInfo)}
    values = {k: v for k, v in raw.items() if k in known}
    problems = _info_problems(values)
    if problems:
        raise CheckpointError(f"{source}: damaged data set description (data_info): {'; '.join(problems[:3])}")
    for key in ("input_shape", "mean", "std", "feature_mean", "feature_std", "target_mean", "target_std"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    try:
        return DatasetInfo(**values)
    except TypeError as exc:
        raise CheckpointError(f"{source}: damaged data set description ({exc})") from None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _info_problems(values: dict[str, Any]) -> list[str]:
    """What predict and export would trip over in a checkpoint's DatasetInfo."""
    problems = []
    if values.get("task") not in ("classification", "regression"):
        problems.append(f"task is {values.get('task')!r}")
    shape = values.get("input_shape")
    if not (isinstance(shape, (list, tuple)) and shape and all(_count(d) for d in shape)):
        problems.append(f"input_shape is {shape!r}, not a list of sizes")
    for key in ("num_classes", "num_outputs"):
        if values.get(key) is not None and not _count(values[key]):
            problems.append(f"{key} is {values[key]!r}")
    names = values.get("class_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == values.get("num_classes")
    ):
        problems.append("class_names is not one name per class")
    if problems:
        return problems  # statistics per channel mean nothing without a shape
    channels = shape[0] if isinstance(shape, (list, tuple)) and shape else None
    for key in ("mean", "std"):
        stats = values.get(key)
        if stats is not None and not (
            isinstance(stats, (list, tuple))
            and len(stats) == channels
            and all(_is_float(v) and math.isfinite(v) and (key == "mean" or v > 0) for v in stats)
        ):
            problems.append(f"{key} is not one finite number per channel")
    return problems


def require_plugins(
    checkpoint: Checkpoint, source: str | Path, imports: Sequence[str] = (), trust: bool = False
) -> None:
    """Import the modules a checkpoint names (its `plugins` and its config's `imports`), with
    the user's leave only: `imports` they named (--import), or `trust` (see plugins.require).
    Modules the user named are imported first, from the working folder too."""
    plugins.import_user_modules(imports)
    config_imports = (checkpoint.config or {}).get("imports")
    named = list(checkpoint.plugins) + (list(config_imports) if isinstance(config_imports, list) else [])
    plugins.require(named, f"checkpoint {source}", imports=imports, trust=trust)


@dataclasses.dataclass
class Trained:
    """A checkpoint's model (CPU, eval mode) with what predict and export need beside it."""

    model: torch.nn.Module
    info: DatasetInfo
    cfg: ExperimentConfig
    source: Path
    data_record: dict[str, Any] | None  # the data set's record (a table's encoding plan, ...)


def load_trained(path: str | Path, *, imports: Sequence[str] = (), trust_plugins: bool = False) -> Trained:
    """A checkpoint's model on the CPU in eval mode, with its data set info, config and data
    record (for predict and export: no data set is loaded). Plugin modules the checkpoint names
    are imported only with the user's leave (`imports`, `trust_plugins`: see plugins.require)."""
    source = checkpoint_file(path)
    checkpoint = load_checkpoint(source)
    checkpoint.require("config", source=source, purpose="rebuild the model")
    require_plugins(checkpoint, source, imports, trust_plugins)
    assert checkpoint.config is not None  # require() checked it
    cfg = resolve(checkpoint.config, REBUILD_OVERRIDES, source=str(source))
    info = dataset_info(checkpoint, source)
    model = build_model(cfg, info, CPU)
    load_model_state(model, checkpoint.model, str(source))
    return Trained(model.eval(), info, cfg, source, checkpoint.data_record)


def load_trained_model(
    path: str | Path, *, imports: Sequence[str] = (), trust_plugins: bool = False
) -> tuple[torch.nn.Module, DatasetInfo, ExperimentConfig, Path]:
    """load_trained's model, data set info, config and checkpoint file."""
    trained = load_trained(path, imports=imports, trust_plugins=trust_plugins)
    return trained.model, trained.info, trained.cfg, trained.source
