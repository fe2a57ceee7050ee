"""How batches are cut from a data set's splits.

In-memory data sets stay whole, as uint8 (images) or float (regression) tensors on the
training device; a batch is an index into them, converted and normalised on the device.
The order of an epoch is a permutation seeded by (seed, epoch) alone, so any position in
any epoch can be reached again without replaying the batches before it: that is what
makes mid-epoch resume exact. Under torch.distributed each rank takes every
world_size-th index of the (padded) permutation, as DistributedSampler does; batch i of
all ranks together is then exactly positions [i*B*W, (i+1)*B*W) of the permutation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import torch

from trainkit.training.data import DatasetInfo, TensorSplit


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (no Python hash(): it is salted per process)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


class Batches:
    """The batches of one split for one process: shuffled and sharded for training, in order
    (and unpadded, so every sample counts once) for evaluation."""

    def __init__(
        self,
        source: TensorSplit | torch.utils.data.Dataset,
        info: DatasetInfo,
        batch_size: int,
        device: torch.device,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: Any = None,
        channels_last: bool = False,
        limit: int | None = None,
    ):
        # Any: a TensorSplit (whole split in memory) or a map-style Dataset; in_memory says which
        self.source: Any = cast(Any, source)
        self.info, self.batch_size, self.device = info, batch_size, device
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.augment = augment if train else None
        self.channels_last = channels_last and len(info.input_shape) == 3
        self.in_memory = isinstance(source, TensorSplit)
        n = len(self.source)
        per_rank = math.ceil(n / world_size) if train else len(range(rank, n, world_size))
        self.samples_per_rank = per_rank
        full = math.ceil(per_rank / batch_size)
        self.num_batches = min(full, limit) if limit else full
        self._scale: torch.Tensor | None = None
        self._shift: torch.Tensor | None = None
        if self.in_memory and self.source.inputs.dtype == torch.uint8 and info.mean is not None:
            # x / 255 normalised by (mean, std) folded into one multiply-add per batch
            shape = (1, -1) + (1,) * (self.source.inputs.dim() - 2)
            std = torch.tensor(info.std, device=device).view(shape)
            mean = torch.tensor(info.mean, device=device).view(shape)
            self._scale, self._shift = 1.0 / (255.0 * std), -mean / std

    def __len__(self) -> int:
        return self.num_batches

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in visiting order."""
        n = len(self.source)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        order = epoch_permutation(n, self.seed, epoch)
        padded = self.samples_per_rank * self.world_size
        if padded > n:  # repeat the first indices so every rank gets the same count
            order = torch.cat([order, order[: padded - n]])
        return order[self.rank :: self.world_size]

    def __call__(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches `start`, `start+1`, ... of `epoch` (earlier ones are skipped, not computed)."""
        order = self.indices(epoch)
        if self.in_memory:
            order = order.to(self.device)
        for b in range(start, self.num_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x, y = self._fetch(idx)
            if self.augment is not None:
                x = self.augment(x, mix_seed(self.seed, epoch, b, self.rank))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.in_memory:
            samples = [self.source[int(i)] for i in idx]
            x = torch.stack([torch.as_tensor(s[0]) for s in samples]).to(self.device, non_blocking=True)
            y = torch.as_tensor([s[1] for s in samples]).to(self.device, non_blocking=True)
            return x.float(), y
        x, y = self.source.inputs[idx], self.source.targets[idx]
        if self._scale is not None and self._shift is not None:
            x = torch.addcmul(self._shift, x.float(), self._scale)
        elif not x.is_floating_point():
            x = x.float()
        return x, y


class Augment:
    """Random crop (after zero padding) and horizontal flip of a whole batch on its device.

    The random draws come from a CPU generator seeded per (seed, epoch, batch, rank), so a
    batch is augmented the same way whether or not the run was interrupted before it.
    """

    def __init__(self, crop_padding: int = 0, hflip: bool = False):
        self.pad, self.hflip = crop_padding, hflip

    def __bool__(self) -> bool:
        return bool(self.pad or self.hflip)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        n, _, h, w = x.shape
        if self.pad:
            p = self.pad
            shifts = torch.randint(0, 2 * p + 1, (2, n), generator=gen).to(x.device, non_blocking=True)
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            rows = (shifts[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (shifts[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, chans, rows, cols]
        if self.hflip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(x.device, non_blocking=True)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x
