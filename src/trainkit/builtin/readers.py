"""Readers for the original data set files: MNIST-family IDX and CIFAR-10 python batches.

They only read: the root may be read-only. Downloads go through torchvision and only
when files are missing and the config says `download: true`.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trainkit.errors import DataError

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def find_file(folders: list[Path], name: str) -> Path | None:
    """`name` or `name.gz` in the first folder that has it."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (plain or gzip) as a tensor; a truncated or malformed file is a DataError."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: cannot read ({exc}); the file is damaged or truncated, delete it and download again"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]  # type: ignore[call-overload]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated or damaged: the header promises {expected} bytes of data "
            f"for shape {tuple(shape)}, the file holds {len(raw) - header}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


try:  # numpy >= 2 moved the array reconstructor; pickles name either place
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Allows exactly what a CIFAR batch holds: dicts, lists, bytes and numpy arrays.

    Any other global (os.system, builtins.eval, ...) is refused before it can run.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1"):
        # a pure conversion, needed for batches re-saved by Python 3 tools
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"global '{module}.{name}' is forbidden in a CIFAR batch") from None


def read_cifar_batch(path: Path) -> dict:
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            return _CifarUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DataError(f"{path}: refused: {exc}") from None
    except (
        pickle.UnpicklingError,
        OSError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        gzip.BadGzipFile,
    ) as exc:
        raise DataError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None


def cifar_split(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images: list[np.ndarray] = []
    labels: list[int] = []
    for path in paths:
        batch = read_cifar_batch(path)
        try:
            data, batch_labels = batch[b"data"], batch[b"labels"]
            images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in batch_labels)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
        if len(images[-1]) != len(batch_labels):
            raise DataError(f"{path}: {len(images[-1])} images but {len(batch_labels)} labels")
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def missing_files_error(dataset: str, names: list[str], folders: list[Path], why: str) -> DataError:
    where = " or ".join(str(f) for f in folders)
    return DataError(f"{dataset}: files not found: expected {', '.join(names)} (plain or .gz) in {where}; {why}")


def ensure_files(
    dataset: str, names: list[str], folders: list[Path], download: bool, fetch: Callable[[], None]
) -> dict[str, Path]:
    """Locate every file, downloading once through torchvision if allowed and needed."""
    found = {n: find_file(folders, n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if not missing:
        return found  # type: ignore[return-value]
    if not download:
        raise missing_files_error(dataset, missing, folders, "set data.download=true to fetch them")
    try:
        fetch()
    except Exception as exc:  # no network, a read-only root, a mirror down...
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__  # torchvision puts the cause last
        raise missing_files_error(dataset, missing, folders, f"the download failed ({reason})") from None
    found = {n: find_file(folders, n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise missing_files_error(dataset, missing, folders, "the download did not produce them")
    return found  # type: ignore[return-value]
