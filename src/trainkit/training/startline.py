"""The line a run prints as soon as everything is built, before its first step.

What a person wants to see first, and before waiting on an epoch: where the run trains,
how big the model and the data are, the batch that one optimizer step sees, and anything
trainkit changed in the process (host memory). One line, plain text.
"""

from __future__ import annotations

from typing import Any

import torch

from trainkit.config import ExperimentConfig
from trainkit.training import hostmem
from trainkit.training.distributed import DistContext


def _count(n: int) -> str:
    """1234567 -> '1.23M'; small counts as they are."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _samples(split: Any) -> str:
    try:
        return f"{len(split):,}"
    except TypeError:  # an iterable data set without a length
        return "?"


def effective_batch(cfg: ExperimentConfig, ctx: DistContext) -> str:
    """'batch 64', or how processes and accumulation multiply it."""
    batch, world, accumulate = cfg.data.batch_size, ctx.world_size, cfg.trainer.accumulate_grad_batches
    total = batch * world * accumulate
    if world == 1 and accumulate == 1:
        return f"batch {batch}"
    parts = ([f"{world} processes"] if world > 1 else []) + [f"batch {batch}"]
    parts += [f"{accumulate} accumulated"] if accumulate > 1 else []
    return f"{' x '.join(parts)} = effective batch {total}"


def start_line(
    cfg: ExperimentConfig,
    device: torch.device,
    module: torch.nn.Module,
    bundle: Any,
    ctx: DistContext,
    verb: str = "training",
) -> str:
    """'training mnist_cnn on cpu: cnn (1.2M parameters), mnist (60,000 train / 10,000 test), batch 64, 3 epochs'."""
    parameters = sum(p.numel() for p in module.parameters())
    parts = [
        f"{cfg.model.name} ({_count(parameters)} parameters)",
        f"{cfg.data.name} ({_samples(bundle.train)} train / {_samples(bundle.test)} test)",
        effective_batch(cfg, ctx),
        f"{cfg.trainer.epochs} epoch" + ("" if cfg.trainer.epochs == 1 else "s"),
    ]
    line = f"{verb} {cfg.name} on {device}: {', '.join(parts)}"
    note = hostmem.note() if device.type == "cpu" else None
    return f"{line}; {note}" if note else line
