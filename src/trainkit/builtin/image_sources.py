"""One split of an image folder as a map-style Dataset, read by trainkit's loader.

Both kinds return uint8 (C, H, W) images; `Batches` converts, normalises and augments them
on the device, exactly as it does the built-in in-memory sets, so a batch is the same bits
whichever path it took. `read_batch` reads a whole batch in one call (one task per batch
for a loader worker); `__getitem__` serves anyone using them as plain torch Datasets.

- `CachedImages`: rows of the decoded-image cache file, memory-mapped. Small enough, the
  whole split is handed over as a TensorSplit (`as_tensor_split`) and never touches the
  loader again: a batch is then an index, as for MNIST.
- `ImageFiles`: decodes the files at each read (no cache, or one too large for the disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainkit.builtin.image_decode import ImageFileError, decode_file
from trainkit.builtin.image_index import FileTable
from trainkit.errors import BadDataFileError
from trainkit.training.data import TensorSplit


class CachedImages(torch.utils.data.Dataset):
    def __init__(self, path: Path, rows: np.ndarray, labels: np.ndarray, shape: tuple[int, int, int]):
        self.path, self.rows, self.labels, self.shape = path, rows, labels.astype(np.int64), shape
        self._pixels: np.ndarray | None = None  # opened lazily, in each process that reads

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            # copy-on-write mapping: writable for torch, never written back to the file
            self._pixels = np.load(self.path, mmap_mode="c")
        return self._pixels

    def __getstate__(self) -> dict[str, Any]:  # pickled for spawned workers: the path, not the pixels
        return {**self.__dict__, "_pixels": None}

    @property
    def nbytes(self) -> int:
        return len(self.rows) * int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.pixels[self.rows[i]])), int(self.labels[i])

    def read_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list]:
        x = torch.from_numpy(self.pixels[self.rows[indices]])  # fancy indexing: a copy
        return x, torch.from_numpy(self.labels[indices]), []

    def as_tensor_split(self) -> TensorSplit:
        rows = self.rows
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            inputs = self.pixels[rows[0] : rows[0] + len(rows)]  # a view of the mapping: no copy
        else:
            inputs = np.ascontiguousarray(self.pixels[rows])
        return TensorSplit(torch.from_numpy(inputs), torch.from_numpy(self.labels))


class ImageFiles(torch.utils.data.Dataset):
    def __init__(
        self,
        root: Path,
        table: FileTable,
        rows: np.ndarray,
        labels: np.ndarray,
        shape: tuple[int, int, int],
        skip_bad: bool,
    ):
        self.root, self.table, self.rows = root, table, rows
        self.labels, self.shape, self.skip_bad = labels.astype(np.int64), shape, skip_bad

    def __len__(self) -> int:
        return len(self.rows)

    def _decode(self, i: int) -> torch.Tensor:
        return decode_file(self.table.file(self.root, int(self.rows[i])), self.shape[0], self.shape[1:])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self._decode(i), int(self.labels[i])
        except ImageFileError as exc:
            raise BadDataFileError(
                f"image_folder: cannot read {exc}; set data.on_bad_file=skip to leave such files out"
            ) from None

    def read_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list]:
        images, kept, skipped = [], [], []
        for position, i in enumerate(indices.tolist()):
            try:
                images.append(self._decode(i))
                kept.append(position)
            except ImageFileError as exc:
                if not self.skip_bad:
                    raise BadDataFileError(
                        f"image_folder: cannot read {exc}; set data.on_bad_file=skip to leave such files out"
                    ) from None
                skipped.append((exc.path, exc.reason))
        x = torch.stack(images) if images else torch.empty((0, *self.shape), dtype=torch.uint8)
        return x, torch.from_numpy(self.labels[indices][kept]), skipped
