"""How batches are cut from a data set's splits.

In-memory data sets stay whole, as uint8 (images) or float (regression) tensors on the
training device; a batch is an index into them, converted and normalised on the device.
The order of an epoch is a permutation seeded by (seed, epoch) alone, so any position in
any epoch can be reached again without replaying the batches before it: that is what
makes mid-epoch resume exact. Under torch.distributed each rank takes every
world_size-th index of the (padded) permutation, as DistributedSampler does; batch i of
all ranks together is then exactly positions [i*B*W, (i+1)*B*W) of the permutation.

Data that is not in memory (files decoded per batch, a user's map-style Dataset) takes the
same indices through `loader.Loader` (worker processes, pinned memory, prefetch) and meets
the in-memory path again on the device: the same conversion, normalisation and
augmentation, so both paths give the same batches bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import torch

from trainkit.training.data import DatasetInfo, TensorSplit
from trainkit.training.loader import EVAL_EPOCH, Loader
from trainkit.training.rng import mix_seed


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
        num_workers: int = 0,
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
        if info.mean is not None and info.std is not None:
            # uint8 x / 255 normalised by (mean, std), folded into one multiply-add per batch
            shape = (1, -1) + (1,) * len(info.input_shape[1:])
            std = torch.tensor(info.std, device=device).view(shape)
            mean = torch.tensor(info.mean, device=device).view(shape)
            self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        classes = info.num_classes if info.task == "classification" else None
        self.loader = (
            None
            if self.in_memory
            else Loader(source, num_workers=num_workers, device=device, seed=seed, classes=classes)
        )

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
        """Batches `start`, `start+1`, ... of `epoch` (earlier ones are skipped, not read)."""
        order = self.indices(epoch)
        spans = [(b * self.batch_size, (b + 1) * self.batch_size) for b in range(start, self.num_batches)]
        if self.loader is not None:
            plan = [order[a:z].numpy() for a, z in spans]
            read = self.loader(epoch if self.train else EVAL_EPOCH, plan)
            pairs = ((x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)) for x, y in read)
        else:
            order = order.to(self.device)
            pairs = ((self.source.inputs[order[a:z]], self.source.targets[order[a:z]]) for a, z in spans)
        for b, (x, y) in enumerate(pairs, start=start):
            x = self._convert(x)
            if self.augment is not None:
                x = self.augment(x, mix_seed(self.seed, epoch, b, self.rank))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8 and self._scale is not None and self._shift is not None:
            return torch.addcmul(self._shift, x.float(), self._scale)
        return x.float()  # float32 like the models' weights (a data set's numpy float64 too); no copy if it is


class Augment:
    """Random resized crop, random crop (after zero padding) and horizontal flip of a whole
    batch on its device, in that order.

    The random draws come from a CPU generator seeded per (seed, epoch, batch, rank), so a
    batch is augmented the same way whether or not the run was interrupted before it, and
    whichever loader worker read its images.
    """

    def __init__(
        self,
        crop_padding: int = 0,
        hflip: bool = False,
        resized_crop: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ):
        self.pad, self.hflip, self.resized_crop = crop_padding, hflip, resized_crop

    def __bool__(self) -> bool:
        return bool(self.pad or self.hflip or self.resized_crop)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if self.resized_crop is not None:
            x = random_resized_crop(x, gen, *self.resized_crop)
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


def random_resized_crop(
    x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> torch.Tensor:
    """torchvision's RandomResizedCrop for a whole batch at once: per image, an area fraction
    in `scale` and a log-uniform aspect ratio in `ratio` (10 tries, else the whole image), a
    uniform position, and bilinear resampling back to the input's size (crops are never
    larger than the image, so no antialiasing is needed): per image the same numbers as
    `F.interpolate(crop, size, mode="bilinear")`. Draws come from `gen` (CPU)."""
    n, _, h, w = x.shape
    tries = 10
    area = torch.empty(tries, n).uniform_(scale[0], scale[1], generator=gen) * (h * w)
    log_ratio = torch.empty(tries, n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_ratio)
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    valid = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
    first = torch.where(valid.any(0), valid.float().argmax(0), torch.full((n,), -1))
    pick = first.clamp(min=0)
    cw = torch.where(first >= 0, cw[pick, torch.arange(n)], torch.tensor(float(w)))
    ch = torch.where(first >= 0, ch[pick, torch.arange(n)], torch.tensor(float(h)))
    x0 = torch.floor(torch.rand(n, generator=gen) * (w - cw + 1))
    y0 = torch.floor(torch.rand(n, generator=gen) * (h - ch + 1))
    # crop then resize, as torchvision does: output pixel j samples the crop at pixel-centre
    # coordinate (j + 0.5) * crop / size - 0.5, clamped inside the crop; grid_sample wants
    # those as [-1, 1] coordinates of the whole image (align_corners=False)
    cols = _sample_points(x0, cw, w)
    rows = _sample_points(y0, ch, h)
    grid = torch.stack(torch.broadcast_tensors(cols[:, None, :], rows[:, :, None]), dim=-1)
    grid = grid.to(x.device, x.dtype)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _sample_points(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size) grid coordinates of `size` samples spread over [start, start + length) pixels."""
    centres = (torch.arange(size) + 0.5)[None, :] * (length / size)[:, None] - 0.5
    source = start[:, None] + centres.clamp(min=torch.zeros(1), max=(length - 1)[:, None])
    return (source + 0.5) * (2.0 / size) - 1.0
