"""Batches of a map-style data set, read in DataLoader worker processes.

`Batches` decides which samples make batch b of an epoch (the seeded permutation, sharded
by rank); this module only reads them, so the batches are the same whoever reads them:

- The DataLoader is handed whole batches of indices (`batch_size=None`, one task per
  batch), in the order `Batches` planned, from the batch a resume starts at: skipped
  batches are never read. Results come back in order, to pinned memory on CUDA.
- Per-sample randomness depends on (seed, epoch, sample index) only. Before each
  `dataset[i]` of a user's Dataset, torch's, numpy's and Python's global generators are
  seeded with `sample_seed(seed, epoch, i)` (and `current_sample()` says which sample it
  is), so random transforms draw the same numbers in any worker, or in the main process
  with `num_workers: 0`, where the main process's own generator states are put back after
  each batch. Data sets of our own (`read_batch`) draw nothing at all: their augmentation
  happens on the device, per batch, in `Batches`.
- The DataLoader draws its base seed from the generator it is given: it gets its own,
  never the global one that model initialisation and dropout use.
- Any exception in a worker comes back as a value and is raised in the main process as
  one line (a TrainkitError); a worker that dies (killed, out of memory) is a
  DataLoaderError naming its pid and signal. The loop saves a checkpoint on either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from trainkit.errors import BadDataFileError, DataContentError, DataLoaderError, OutOfMemoryError, TrainkitError
from trainkit.training.data import TensorSplit
from trainkit.training.rng import mix_seed

log = logging.getLogger("trainkit")
EVAL_EPOCH = -1  # the "epoch" of evaluation batches, for sample seeds
_MAX_DEFAULT_WORKERS = 8


class SampleKey(NamedTuple):
    seed: int  # the run's seed
    epoch: int  # 0-based; EVAL_EPOCH (-1) while evaluating
    sample: int  # the sample's index in its split


_current: SampleKey | None = None


def current_sample() -> SampleKey | None:
    """The sample a Dataset's __getitem__ is being asked for by trainkit's loader, or None."""
    return _current


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random draws: a function of (seed, epoch, index) alone."""
    return mix_seed(seed, epoch, index, 0x5A3D1E)


def default_num_workers() -> int:
    """Worker processes when data.num_workers is not set: this machine's cores (at most 8);
    none on a single core, where a worker would only compete with the training step."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 0 if cores <= 1 else min(cores, _MAX_DEFAULT_WORKERS)


def fits_in_memory(nbytes: int, device: torch.device) -> bool:
    """Whether a whole split of `nbytes` may live on `device` (half of what is free there)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2
    total = host_memory()
    return total is None or nbytes <= total // 2


def host_memory() -> int | None:
    """This machine's physical memory in bytes; None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def place(source: Any, device: torch.device) -> Any:
    """A split where the loop reads it: a TensorSplit on the device (today's fast path), a
    Dataset that can hand itself over whole (`as_tensor_split()`, e.g. decoded images in a
    cache file) there too when it fits, anything else stays a Dataset for the loader."""
    if isinstance(source, TensorSplit):
        return source.to(device)
    whole = getattr(source, "as_tensor_split", None)
    if callable(whole) and fits_in_memory(int(getattr(source, "nbytes", 0)), device):
        return whole().to(device)
    return source


# ------------------------------------------------------------------ what a worker runs


class _Failure:
    """An exception in a worker, as plain data (tracebacks stay in the worker)."""

    def __init__(self, kind: str, message: str):
        self.kind, self.message = kind, message

    def error(self) -> TrainkitError:
        if self.kind == "memory":
            return OutOfMemoryError(self.message)
        if self.kind == "bad_file":
            return BadDataFileError(self.message)
        return DataLoaderError(self.message)


def _failure(exc: BaseException, what: str) -> _Failure:
    if isinstance(exc, MemoryError):
        return _Failure("memory", f"out of host memory while {what}; lower data.num_workers or data.batch_size")
    if isinstance(exc, BadDataFileError):
        return _Failure("bad_file", str(exc))
    if isinstance(exc, TrainkitError):
        return _Failure("data", str(exc))
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return _Failure("data", f"{what} failed: {type(exc).__name__}{': ' + text if text else ''}{where}")


def _what(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def sample_input(sample: Any, index: int) -> torch.Tensor:
    """A user data set's sample `index` is an (input, target) pair: its input as a tensor,
    or a DataContentError naming the sample (not torch.stack's error about "entry 10")."""
    if not isinstance(sample, (tuple, list)) or len(sample) < 2:  # more (an id, say) are left alone
        raise DataContentError(f"sample {index} of the data set is {_what(sample)}, not an (input, target) pair")
    try:
        return torch.as_tensor(sample[0])
    except (TypeError, ValueError, RuntimeError):
        raise DataContentError(
            f"sample {index} of the data set: its input is {_what(sample[0])}, not a tensor or an array"
        ) from None


def _stack_targets(targets: list[Any], indices: list[int]) -> torch.Tensor:
    """Numbers, numpy scalars and arrays, tensors: one tensor each, stacked (numpy arrays one
    by one: a list of them is torch's slow path, and it warns)."""
    ys = []
    for t, i in zip(targets, indices, strict=True):
        try:
            ys.append(torch.as_tensor(t))
        except (TypeError, ValueError, RuntimeError):
            raise DataContentError(
                f"sample {i} of the data set: its target is {_what(t)}, not a number, an array or a tensor"
            ) from None
    _check_one_shape(ys, indices, "target")
    return torch.stack(ys)


def _check_one_shape(parts: list[torch.Tensor], indices: list[int], part: str) -> None:
    """The inputs (or targets) of a batch are stacked: a sample whose own has another shape is named."""
    for x, i in zip(parts, indices, strict=True):
        if x.shape != parts[0].shape:
            raise DataContentError(
                f"sample {i} of the data set: its {part} has shape {tuple(x.shape)}, sample {indices[0]}'s "
                f"{tuple(parts[0].shape)}; a batch stacks its {part}s, so they need one shape"
            )


def _collate(samples: list[Any], indices: list[int], classes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of a user data set's samples; a sample that cannot join it is named."""
    inputs = [sample_input(s, i) for s, i in zip(samples, indices, strict=True)]
    _check_one_shape(inputs, indices, "input")
    targets = [s[1] for s in samples]
    y = torch.tensor(targets) if all(type(t) is int for t in targets) else _stack_targets(targets, indices)
    if classes is not None and y.dim() == 1 and (k := first_outside(y, classes)) is not None:
        raise DataContentError(
            f"sample {indices[k]} of the data set: its target {int(y[k])} is not a class index "
            f"(num_classes is {classes}: 0 to {classes - 1})"
        )
    return torch.stack(inputs), y


def first_outside(targets: torch.Tensor, classes: int) -> int | None:
    """The position of the first integer target that is no class index (0 to classes - 1);
    None when there is none, or the targets are not integers (a loss takes probabilities too)."""
    if targets.is_floating_point():
        return None
    outside = torch.nonzero((targets < 0) | (targets >= classes)).flatten()
    return int(outside[0]) if len(outside) else None


class _Reader(torch.utils.data.Dataset):
    """Reads one planned batch: key (epoch, indices) -> ("ok", x, y, skipped) or a _Failure."""

    def __init__(self, source: Any, seed: int, classes: int | None = None):
        self.source, self.seed, self.classes = source, seed, classes
        self.batch_reader = getattr(source, "read_batch", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, np.ndarray]) -> Any:
        epoch, indices = key
        try:
            if self.batch_reader is not None:  # our own sources: whole batches, no randomness
                x, y, skipped = self.batch_reader(indices)
                return "ok", x, y, skipped
            return ("ok", *self._samples(epoch, indices), [])
        except Exception as exc:  # returned, not raised: the main process makes it one line
            return _failure(exc, f"reading sample {getattr(exc, 'sample_index', '?')} of the data set")

    def _samples(self, epoch: int, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        global _current
        in_main = get_worker_info() is None
        saved = (torch.get_rng_state(), random.getstate(), np.random.get_state()) if in_main else None
        samples = []
        try:
            for i in indices.tolist():
                seed = sample_seed(self.seed, epoch, i)
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                _current = SampleKey(self.seed, epoch, i)
                try:
                    samples.append(self.source[i])
                except Exception as exc:
                    exc.sample_index = i  # type: ignore[attr-defined]
                    raise
        finally:
            _current = None
            if saved is not None:  # the main process's generators drive dropout: untouched
                torch.set_rng_state(saved[0])
                random.setstate(saved[1])
                np.random.set_state(saved[2])
        return _collate(samples, indices.tolist(), self.classes)


class _Plan:
    """The DataLoader's sampler: the keys of the batches of the current pass."""

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole foreground process group: it is the main process's to handle
    # (finish the step, save, stop); a worker ended by it would look like a crash. SIGTERM
    # stays deadly: multiprocessing ends leftover workers with it at exit (and a SIGTERM to
    # the whole group, which ends them too, is turned into an interruption by the loop).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _as_is(result: Any) -> Any:
    """The collate function: results pass unchanged (DataLoader's default would turn numpy
    arrays into tensors); a module-level function, so spawned workers can unpickle it."""
    return result


@contextlib.contextmanager
def _workers_as_asked() -> Iterator[None]:
    # more workers than cores is the user's call (data.num_workers); torch warns at each start
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*worker processes in total.*")
        yield


def _data_loader(dataset: Any, plan: Any, num_workers: int, pin: bool, persistent: bool) -> DataLoader:
    with _workers_as_asked():
        return DataLoader(
            dataset,
            batch_size=None,  # each key is a whole batch
            sampler=plan,
            collate_fn=_as_is,
            num_workers=num_workers,
            pin_memory=pin,
            persistent_workers=persistent and num_workers > 0,
            prefetch_factor=2 if num_workers > 0 else None,
            generator=torch.Generator(),  # its base seed must not come from the global generator
            worker_init_fn=_worker_init if num_workers > 0 else None,
        )


def _start(loader: DataLoader) -> Iterator[Any]:
    """iter(loader), without the SIGCHLD handler DataLoader installs: that handler raises in
    whatever the main thread is running when a worker dies (an optimizer step half done).
    A dead worker is found at the next batch read instead (DataLoader polls every 5 s)."""
    with _workers_as_asked():
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCHLD"):
            return iter(loader)
        before = signal.getsignal(signal.SIGCHLD)
        try:
            return iter(loader)
        finally:
            if before is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signal.SIGCHLD, before)


def _dead_workers(iterator: Any) -> list[str]:
    dead = []
    for worker in getattr(iterator, "_workers", []):
        code = worker.exitcode
        if code is not None and code != 0:
            if code < 0:
                name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
                oom = " (the system may have run out of memory)" if -code == signal.SIGKILL else ""
                dead.append(f"pid {worker.pid} killed by {name}{oom}")
            else:
                dead.append(f"pid {worker.pid} exited with code {code}")
    return dead


def _death(iterator: Any, exc: BaseException, what: str) -> DataLoaderError:
    # A worker's pipe closes while it exits, a moment before its exit status can be read:
    # wait a little for it, so the message says how it died (killed by SIGKILL: memory)
    deadline = time.monotonic() + 2.0
    while not (dead := _dead_workers(iterator)) and time.monotonic() < deadline:
        time.sleep(0.02)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = "; ".join(dead) if dead else first
    return DataLoaderError(
        f"a data loader worker died while {what} ({detail}); lower data.num_workers or "
        "data.batch_size if memory is short, or set data.num_workers=0"
    )


def _next(iterator: Iterator[Any], what: str) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        raise
    except TrainkitError:
        raise
    except (RuntimeError, OSError, EOFError, ConnectionError) as exc:
        raise _death(iterator, exc, what) from None


class Loader:
    """Reads planned batches of one split of a map-style data set, in worker processes
    (started once and kept across epochs) or, with num_workers=0, in this process."""

    def __init__(self, source: Any, *, num_workers: int, device: torch.device, seed: int, classes: int | None = None):
        """`classes`: a classification's class count, to check a user data set's targets against."""
        self.source, self.num_workers = source, num_workers
        self._plan = _Plan()
        reader = _Reader(source, seed, classes)
        self._loader = _data_loader(reader, self._plan, num_workers, device.type == "cuda", True)
        self._iterator: Iterator[Any] | None = None
        self._warned: set[str] = set()

    def __call__(self, epoch: int, batches: Sequence[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) on the host for each batch of indices, in order."""
        self._plan.keys = [(epoch, np.asarray(b, dtype=np.int64)) for b in batches]
        what = f"reading epoch {epoch + 1}" if epoch != EVAL_EPOCH else "reading evaluation batches"
        if self._iterator is None or self.num_workers == 0:
            self._iterator = _start(self._loader)
        else:  # persistent workers: the same processes go on with the new plan
            with _workers_as_asked():
                self._iterator = iter(self._loader)
        for _ in range(len(batches)):
            result = _next(self._iterator, what)
            if isinstance(result, _Failure):
                raise result.error()
            _, x, y, skipped = result
            self._warn_skipped(skipped)
            yield x, y

    def _warn_skipped(self, skipped: list[tuple[str, str]]) -> None:
        for path, reason in skipped:
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipped %s (%s): on_bad_file is skip", path, reason)


class _MapTask(torch.utils.data.Dataset):
    def __init__(self, fn: Callable[[Any], Any], items: Sequence[Any]):
        self.fn, self.items = fn, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        try:
            return "ok", self.fn(self.items[i])
        except Exception as exc:
            return _failure(exc, "a worker's task")


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], num_workers: int) -> Iterator[Any]:
    """fn(item) for each item, in order, in up to `num_workers` worker processes (0: here).
    `fn` must be picklable for start methods other than fork (a module-level class)."""
    workers = min(num_workers, len(items))
    loader = _data_loader(_MapTask(fn, items), range(len(items)), workers, False, False)
    iterator = _start(loader)
    for _ in range(len(items)):
        result = _next(iterator, "decoding images")
        if isinstance(result, _Failure):
            raise result.error()
        yield result[1]
