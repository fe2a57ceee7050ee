"""Config -> built components on a device, and checkpoint <-> those components.

This is the one place that turns a validated config into torch objects (data, model,
optimizer, scheduler, wrapped for DDP / torch.compile as asked) and that maps them to
and from the checkpoint dict.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from typing import Any

import torch

from trainkit import plugins, rng
from trainkit._version import __version__
from trainkit.checkpoint import FORMAT_VERSION, to_cpu
from trainkit.config import ExperimentConfig
from trainkit.data import Augment, Batches, DataBundle, DatasetInfo, TensorSplit
from trainkit.distributed import DistContext
from trainkit.errors import CheckpointError, ConfigError, TrainkitError
from trainkit.hostmem import keep_freed_memory
from trainkit.loop import Run, TrainState
from trainkit.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULERS

log = logging.getLogger("trainkit")


def load_data(cfg: ExperimentConfig) -> DataBundle:
    bundle = DATASETS.build(cfg.data.name, cfg.data.options(), seed=cfg.seed)
    if not isinstance(bundle, DataBundle):
        raise TrainkitError(f"dataset '{cfg.data.name}' returned {type(bundle).__name__}; "
                            "a dataset builder must return trainkit.data.DataBundle")
    return bundle


def build_model(cfg: ExperimentConfig, info: DatasetInfo, device: torch.device) -> torch.nn.Module:
    model = MODELS.build(cfg.model.name, cfg.model.options(), input_shape=tuple(info.input_shape),
                         num_classes=info.num_classes, num_outputs=info.num_outputs)
    if not isinstance(model, torch.nn.Module):
        raise TrainkitError(f"model '{cfg.model.name}' returned {type(model).__name__}, not a torch.nn.Module")
    model = model.to(device)
    if cfg.trainer.channels_last and len(info.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


def eval_batches(cfg: ExperimentConfig, bundle: DataBundle, device: torch.device, dist: DistContext,
                 split: str = "test") -> Batches:
    source = bundle.test if split == "test" else bundle.train
    if isinstance(source, TensorSplit):
        source = source.to(device)
    return Batches(source, bundle.info, cfg.data.eval_batch_size, device, train=False, rank=dist.rank,
                   world_size=dist.world_size, channels_last=cfg.trainer.channels_last,
                   limit=cfg.trainer.limit_eval_batches)


def prepare_device(cfg: ExperimentConfig, device: torch.device) -> None:
    """Process-wide settings for the device, before anything is built: checks, then speed."""
    if cfg.trainer.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision: fp16 needs a CUDA device (this run is on {device.type}); use bf16")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.trainer.cudnn_benchmark
    else:
        keep_freed_memory()  # activations on the host: reuse freed buffers instead of re-faulting pages


def build_run(cfg: ExperimentConfig, bundle: DataBundle, module: torch.nn.Module, device: torch.device,
              dist: DistContext) -> Run:
    """Optimizer, scheduler, batches and wrappers around an already-built model."""
    t = cfg.trainer
    train_source = bundle.train.to(device) if isinstance(bundle.train, TensorSplit) else bundle.train
    augment = Augment(cfg.data.augment.crop_padding, cfg.data.augment.hflip)
    if augment and len(bundle.info.input_shape) != 3:
        raise ConfigError("data.augment: crop and flip need image inputs (channels, height, width)")
    train = Batches(train_source, bundle.info, cfg.data.batch_size, device, train=True, seed=cfg.seed,
                    rank=dist.rank, world_size=dist.world_size, augment=augment or None,
                    channels_last=t.channels_last, limit=t.limit_batches)
    steps_per_epoch = math.ceil(len(train) / t.accumulate_grad_batches)
    optimizer = OPTIMIZERS.build(cfg.optimizer.name, cfg.optimizer.options(), params=module.parameters())
    scheduler = None
    if cfg.scheduler is not None:
        scheduler = SCHEDULERS.build(cfg.scheduler.name, cfg.scheduler.options(), optimizer=optimizer,
                                     total_steps=steps_per_epoch * t.epochs, steps_per_epoch=steps_per_epoch,
                                     epochs=t.epochs)
    scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
    model = module
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
    eval_model = module
    if t.compile:
        model, eval_model = torch.compile(model), torch.compile(module)
    classification = bundle.info.task == "classification"
    return Run(model=model, eval_model=eval_model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               train_batches=train, eval_batches=eval_batches(cfg, bundle, device, dist), task=bundle.info.task,
               device=device, dist=dist, epochs=t.epochs, log_every=t.log_every,
               every_n_steps=cfg.checkpoint.every_n_steps, accumulate=t.accumulate_grad_batches,
               grad_clip=t.grad_clip, precision=t.precision, label_smoothing=t.label_smoothing,
               early_stopping=t.early_stopping,
               monitor=("val_accuracy", "max") if classification else ("val_loss", "min"))


def used_plugins(cfg: ExperimentConfig) -> list[str]:
    """Modules outside trainkit that a checkpoint of this config needs to be rebuilt."""
    builders = [registry.get(getattr(cfg, section).name).builder
                for section, registry in (("model", MODELS), ("data", DATASETS), ("optimizer", OPTIMIZERS),
                                          ("scheduler", SCHEDULERS)) if getattr(cfg, section) is not None]
    return list(dict.fromkeys(cfg.imports + plugins.modules_of(builders)))


def checkpoint_payload(cfg: ExperimentConfig, run: Run, module: torch.nn.Module, info: DatasetInfo,
                       state: TrainState, rng_states: list[Any], metrics_offset: int, is_best: bool) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "versions": {"trainkit": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        "config": cfg.to_dict(),
        "plugins": used_plugins(cfg),
        "model": to_cpu(module.state_dict()),
        "optimizer": to_cpu(run.optimizer.state_dict()),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "best_metric": state.best_metric,
        "is_best": is_best,
        "state": state.to_dict(),
        "rng": rng_states,
        "world_size": run.dist.world_size,
        "data_info": dataclasses.asdict(info),
        "metrics_offset": metrics_offset,
        "saved_at": time.time(),
    }


def _clean_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Drop the prefixes DDP ('module.') and torch.compile ('_orig_mod.') add, as timm does."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def load_model_state(module: torch.nn.Module, state_dict: dict[str, Any], source: str) -> None:
    """load_state_dict, with a mismatch explained in terms of the architecture."""
    state_dict = _clean_keys(state_dict)
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} is {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the model"
                  for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        details = mismatched[:3] + ([f"missing keys {missing[:3]}"] if missing else []) \
            + ([f"unexpected keys {unexpected[:3]}"] if unexpected else [])
        raise CheckpointError(f"{source} was written by a different model architecture: {'; '.join(details)}")
    module.load_state_dict(state_dict)


def restore_training(ckpt: dict[str, Any], run: Run, module: torch.nn.Module, source: str, batch_size: int) -> TrainState:
    """Model, optimizer, scheduler, scaler and RNG from a checkpoint; returns the loop state."""
    load_model_state(module, ckpt["model"], source)
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        if run.scheduler is not None and ckpt.get("scheduler") is not None:
            run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.scaler is not None and ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: optimizer or scheduler state does not fit this run ({exc})") from None
    known = {f.name for f in dataclasses.fields(TrainState)}
    state = TrainState(**{k: v for k, v in ckpt["state"].items() if k in known})
    saved_world = ckpt.get("world_size", 1)
    ctx = run.dist
    if saved_world != ctx.world_size and state.batch:
        # The global order is one permutation; skipping the first k*B*W positions of it is
        # exact for any W, so keep the sample position, rounded down to a whole batch.
        samples = state.batch * batch_size * saved_world
        state.batch = samples // (batch_size * ctx.world_size)
        state.epoch_losses = state.epoch_losses[: state.batch]
        state.logged_batch = min(state.logged_batch, state.batch)
        log.warning("resuming a %d-process checkpoint with %d processes: the run continues from the same sample "
                    "of the epoch but is not bit-identical to an uninterrupted run", saved_world, ctx.world_size)
    states = ckpt.get("rng") or []
    if ctx.rank < len(states) and saved_world == ctx.world_size:
        rng.restore(states[ctx.rank], run.device)
    else:
        rng.seed_everything(ckpt["config"]["seed"] + ctx.rank + state.step)
    return state
