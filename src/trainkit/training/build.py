"""Config -> built components on a device: the one place that turns a validated config
into torch objects (data, model, optimizer, scheduler, wrapped for DDP / torch.compile as
asked), in one sequence that train, resume and evaluate share (`build`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from trainkit.config import ExperimentConfig, check_metric_for_task
from trainkit.errors import ConfigError, DataContentError, TrainkitError
from trainkit.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULERS
from trainkit.training import finetune, hostmem, rng
from trainkit.training.batches import Augment, Batches
from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit, border_mean
from trainkit.training.distributed import DistContext, resolve_device
from trainkit.training.initweights import init_from
from trainkit.training.loader import default_num_workers, first_outside, place
from trainkit.training.loop import Run

log = logging.getLogger("trainkit")


def num_workers(cfg: ExperimentConfig) -> int:
    return default_num_workers() if cfg.data.num_workers is None else cfg.data.num_workers


def load_data(cfg: ExperimentConfig, record: dict[str, Any] | None = None) -> DataBundle:
    """The data set; `record` is what a checkpoint saved of it (None for a new run)."""
    bundle = DATASETS.build(
        cfg.data.name, cfg.data.options(), seed=cfg.seed, record=record, num_workers=num_workers(cfg)
    )
    if not isinstance(bundle, DataBundle):
        raise TrainkitError(
            f"dataset '{cfg.data.name}' returned {type(bundle).__name__}; "
            "a dataset builder must return trainkit.DataBundle"
        )
    train = bundle.train
    if (
        bundle.info.border is None
        and isinstance(train, TensorSplit)
        and train.inputs.dtype == torch.uint8
        and train.inputs.dim() == 4
    ):
        bundle.info.border = border_mean(train.inputs[:1000])  # saved with data_info, for predict
    declared = DATASETS.get(cfg.data.name).traits.get("task")
    if declared is not None and declared != bundle.info.task:
        raise TrainkitError(
            f"dataset '{cfg.data.name}' is registered with task={declared!r} but built a {bundle.info.task} data set"
        )
    for split, which in ((bundle.train, "training"), (bundle.test, "test")):
        if isinstance(split, TensorSplit):
            _check_split(split, bundle.info, f"dataset '{cfg.data.name}': its {which} split")
    return bundle


def _check_split(split: TensorSplit, info: DatasetInfo, what: str) -> None:
    """A builder's in-memory split, checked once (a user data set's batches are checked as they
    are read, see loader._collate): wrong here, it would fail deep in the loss as a traceback,
    or, with fewer targets than inputs, train on part of the inputs without a word."""
    if len(split.inputs) != len(split.targets):
        raise DataContentError(f"{what} has {len(split.inputs)} inputs but {len(split.targets)} targets")
    y = split.targets
    if info.task != "classification" or y.dim() != 1 or len(y) == 0:
        return
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataContentError(f"{what} has {y.dtype} targets; class indices are integers (torch.long)")
    classes = info.num_classes
    if classes and (k := first_outside(y, classes)) is not None:
        raise DataContentError(
            f"{what}: target {int(y[k])} of sample {k} is not a class index "
            f"(num_classes is {classes}: 0 to {classes - 1})"
        )


def build_model(
    cfg: ExperimentConfig, info: DatasetInfo, device: torch.device, new_run: bool = False
) -> torch.nn.Module:
    """The model on `device`. `new_run`: a run starts, so pretrained weights are loaded (a
    rebuilt model receives a checkpoint's weights instead)."""
    model = MODELS.build(
        cfg.model.name,
        cfg.model.options(),
        input_shape=tuple(info.input_shape),
        num_classes=info.num_classes,
        num_outputs=info.num_outputs,
        new_run=new_run,
    )
    if not isinstance(model, torch.nn.Module):
        raise TrainkitError(f"model '{cfg.model.name}' returned {type(model).__name__}, not a torch.nn.Module")
    model = model.to(device)
    if cfg.trainer.channels_last and len(info.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


CPU_EVAL_BATCH = 128  # the classic CNN evaluates 5,000 MNIST images in 1.3 s at 128, 1.8-2.3 s at 1000


def eval_batch_size(cfg: ExperimentConfig, device: torch.device) -> int:
    """data.eval_batch_size, or unset: 1000 on an accelerator, 128 on the CPU. Batches of 1000
    give the CPU activations of a hundred MB (the classic CNN's first layer) that leave its caches
    and, above malloc's mmap threshold, are faulted in afresh for every batch."""
    if cfg.data.eval_batch_size is not None:
        return cfg.data.eval_batch_size
    return CPU_EVAL_BATCH if device.type == "cpu" else 1000


def eval_batches(
    cfg: ExperimentConfig, bundle: DataBundle, device: torch.device, dist: DistContext, split: str = "test"
) -> Batches:
    source = bundle.test if split == "test" else bundle.train
    return Batches(
        place(source, device),
        bundle.info,
        eval_batch_size(cfg, device),
        device,
        train=False,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        channels_last=cfg.trainer.channels_last,
        limit=cfg.trainer.limit_eval_batches,
        num_workers=num_workers(cfg),
    )


def prepare_device(cfg: ExperimentConfig, device: torch.device) -> None:
    """Settings for the device, before anything is built: checks, then speed.

    Callers run inside `process_settings()`, which puts cuDNN's flag back afterwards."""
    if cfg.trainer.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision: fp16 needs a CUDA device (this run is on {device.type}); use bf16")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.trainer.cudnn_benchmark
    elif device.type == "cpu":
        # activations on the host: reuse freed buffers instead of re-faulting pages (hostmem.py)
        hostmem.apply(cfg.trainer.host_memory)


@contextlib.contextmanager
def process_settings() -> Iterator[None]:
    """Put back what a run changes in the process (cuDNN's autotuner flag, sys.path), so a
    run started from a notebook leaves the notebook as it was. malloc's thresholds are the
    exception, and only when asked for (trainer.host_memory, see hostmem.py)."""
    benchmark, path = torch.backends.cudnn.benchmark, list(sys.path)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        sys.path[:] = path


def build_run(
    cfg: ExperimentConfig, bundle: DataBundle, module: torch.nn.Module, device: torch.device, dist: DistContext
) -> Run:
    """Optimizer, scheduler, batches and wrappers around an already-built model."""
    t = cfg.trainer
    crop = cfg.data.augment.random_resized_crop
    augment = Augment(cfg.data.augment.crop_padding, cfg.data.augment.hflip, (crop.scale, crop.ratio) if crop else None)
    if augment and len(bundle.info.input_shape) != 3:
        raise ConfigError("data.augment: crop and flip need image inputs (channels, height, width)")
    train = Batches(
        place(bundle.train, device),
        bundle.info,
        cfg.data.batch_size,
        device,
        train=True,
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        augment=augment or None,
        channels_last=t.channels_last,
        limit=t.limit_batches,
        num_workers=num_workers(cfg),
    )
    check_metric_for_task(t.early_stopping, bundle.info.task)  # for data sets that declare no task
    steps_per_epoch = math.ceil(len(train) / t.accumulate_grad_batches)
    plan = finetune.plan(cfg, module)
    optimizer = build_optimizer(cfg, module, plan)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None

    def wrap() -> Any:
        """What the step calls: the module, maybe DDP-wrapped and/or compiled."""
        model: Any = module
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            # only when some trainable parameter gets no gradient: the search costs every step
            unused = finetune.unused_parameters(module, tuple(bundle.info.input_shape))
            if unused is None or unused:
                what = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "") if unused else "(not checked)"
                log.info(f"DDP: find_unused_parameters is on: parameters without a gradient: {what}")
            model = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=ids, find_unused_parameters=unused is None or bool(unused)
            )
        return torch.compile(model) if t.compile else model

    tuning = finetune.Finetune(cfg, module, plan, wrap) if plan.frozen else None
    model = wrap()
    eval_model: Any = torch.compile(module) if t.compile else module
    classification = bundle.info.task == "classification"
    return Run(
        model=model,
        eval_model=eval_model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        train_batches=train,
        eval_batches=eval_batches(cfg, bundle, device, dist),
        task=bundle.info.task,
        device=device,
        dist=dist,
        epochs=t.epochs,
        log_every=t.log_every,
        every_n_steps=cfg.checkpoint.every_n_steps,
        accumulate=t.accumulate_grad_batches,
        grad_clip=t.grad_clip,
        precision=t.precision,
        label_smoothing=t.label_smoothing,
        early_stopping=t.early_stopping,
        monitor=("val_accuracy", "max") if classification else ("val_loss", "min"),
        before_epoch=tuning.before_epoch if tuning is not None else None,
    )


def build_optimizer(
    cfg: ExperimentConfig, module: torch.nn.Module, plan: finetune.Plan | None = None
) -> torch.optim.Optimizer:
    """The config's optimizer over the model's parameters, in the parameter groups of the
    fine-tuning plan (frozen parameters left out, model.freeze / optimizer.param_groups)."""
    plan = plan if plan is not None else finetune.plan(cfg, module)
    params: Any = plan.groups if plan.custom else module.parameters()
    optimizer = OPTIMIZERS.build(cfg.optimizer.name, cfg.optimizer.options(), params=params)
    finetune.check_group_options(cfg, optimizer)
    return optimizer


def build_scheduler(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    """The config's scheduler, planned over the epochs it covers: the whole run, or from
    `scheduler.start_epoch` on when a resumed run was given a new schedule."""
    if cfg.scheduler is None:
        return None
    epochs = cfg.trainer.epochs - cfg.scheduler.start_epoch
    return SCHEDULERS.build(
        cfg.scheduler.name,
        cfg.scheduler.options(),
        optimizer=optimizer,
        total_steps=steps_per_epoch * epochs,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
    )


@dataclass
class Built:
    """What `build` returns: the device, the data, the model and (for training) the Run."""

    device: torch.device
    bundle: DataBundle
    module: torch.nn.Module  # the plain model (not DDP-wrapped or compiled): what checkpoints hold
    run: Run | None
    started_from: dict[str, Any] | None = None  # what model.init_from loaded (a new run only)


def build(
    cfg: ExperimentConfig,
    ctx: DistContext,
    *,
    training: bool = True,
    data_record: dict[str, Any] | None = None,
    new_run: bool = False,
) -> Built:
    """The one build sequence: device, seed, data, model, then optimizer & co. for training.

    `data_record` is the data set's record from a checkpoint (resume, eval), so the data is
    rebuilt exactly as the run saw it. `new_run`: a run starts here, so the model starts from
    its pretrained weights or model.init_from (a resumed or evaluated one gets a checkpoint's)."""
    device = resolve_device(cfg.trainer.device, ctx)
    prepare_device(cfg, device)
    rng.seed_everything(cfg.seed)
    bundle = load_data(cfg, data_record)
    module = build_model(cfg, bundle.info, device, new_run=new_run)
    started_from = None
    if new_run and cfg.model.init_from:
        started_from = init_from(module, cfg, bundle.info.num_outputs)
    run = build_run(cfg, bundle, module, device, ctx) if training else None
    if ctx.rank > 0:  # same initial weights everywhere (DDP broadcasts them), own dropout masks
        rng.seed_everything(cfg.seed + ctx.rank)
    return Built(device, bundle, module, run, started_from)
