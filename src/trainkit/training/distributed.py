"""torch.distributed, when torchrun started us; no-ops in a single process.

The loop talks to a `DistContext` and never asks how many processes there are, so one
process is just the world_size == 1 case of the same code.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainkit.errors import ConfigError, TrainingInterrupted
from trainkit.training import parentwatch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is True on any rank (used to stop all ranks together)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def max(self, value: int, device: torch.device) -> int:
        """The largest of every rank's small non-negative integer (a signal number), on every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([float(value)], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self, clean: bool = True) -> None:
        if self.enabled and dist.is_initialized():
            if clean:
                # leave together: a rank that tears its connections down while a peer still
                # uses them can make gloo abort that peer at exit. After a failure no barrier:
                # the peers may be elsewhere, and torchrun stops them anyway.
                dist.barrier()
            dist.destroy_process_group()

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        # an interruption is agreed by every rank after a common checkpoint: still in step
        self.close(clean=exc_type is None or issubclass(exc_type, TrainingInterrupted))


def from_env(device_preference: str) -> DistContext:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's launcher: stop if it dies
        parentwatch.stop_when_parent_dies()
    use_cuda = device_preference.startswith("cuda") or (device_preference == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device: 'cuda' was asked for, but this machine has no CUDA device")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # A peer that dies is noticed through the broken connection; the timeout only
        # bounds a hang that nothing else would end.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    return DistContext(rank, world_size, local_rank)


def check_launch(preference: str, nproc: int) -> None:
    """Before `nproc` processes start on this machine: is the device there for each of them?
    (Each CUDA process takes the device of its LOCAL_RANK.)"""
    if nproc <= 1 and preference == "auto":
        return
    wants_cuda = preference.startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device: '{preference}' was asked for, but this machine has no CUDA "
            f"device (torch {torch.__version__}); use --device cpu or trainer.device=auto"
        )
    if nproc > 1 and (wants_cuda or (preference == "auto" and torch.cuda.is_available())):
        count = torch.cuda.device_count()
        if nproc > count:
            raise ConfigError(
                f"--nproc {nproc}: each process trains on its own CUDA device and this machine has {count}; "
                f"use --nproc {count} or fewer (or --device cpu)"
            )
    if nproc > 1 and preference == "mps":
        raise ConfigError("trainer.device: 'mps' runs in one process; drop --nproc or use --device cpu")


def resolve_device(preference: str, ctx: DistContext) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() and not ctx.enabled:
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.device: '{preference}' was asked for, but this machine has no CUDA "
                f"device (torch {torch.__version__}); use --device cpu or trainer.device=auto"
            )
        index = ctx.local_rank if ctx.enabled else (device.index or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"trainer.device: '{preference}' does not exist; "
                f"this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.device: 'mps' was asked for, but MPS is not available on this machine")
    return device
