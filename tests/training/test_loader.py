"""The loader: the same batches whoever reads them, per-sample seeds, one-line failures."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest
import torch

from helpers_images import write_folder
from trainkit.builtin.image_folder import image_folder
from trainkit.errors import DataLoaderError, OutOfMemoryError
from trainkit.training.batches import Augment, Batches
from trainkit.training.data import DatasetInfo
from trainkit.training.loader import current_sample, place, sample_seed

CPU = torch.device("cpu")
INFO = DatasetInfo("classification", (1, 4, 4), 3)


class Noisy(torch.utils.data.Dataset):
    """A user's Dataset with a random transform drawn from the global generators."""

    def __init__(self, n: int = 30):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x = torch.full((1, 4, 4), float(i)) + torch.rand(1, 4, 4) + float(np.random.rand()) + random.random()
        return x, i % 3


class Failing(Noisy):
    def __init__(self, error: BaseException, at: int = 5):
        super().__init__()
        self.error, self.at = error, at

    def __getitem__(self, i: int):
        if i == self.at:
            raise self.error
        return super().__getitem__(i)


class Dying(Noisy):
    def __getitem__(self, i: int):
        if torch.utils.data.get_worker_info() is not None and i == 7:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer does
        return super().__getitem__(i)


class Keyed(Noisy):
    def __getitem__(self, i: int):
        key = current_sample()
        return torch.tensor([[[key.seed, key.epoch, key.sample, 0]] * 4]).float(), i % 3


def epoch(batches: Batches, number: int = 0, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches(number, start))


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


def test_a_datasets_random_draws_do_not_depend_on_the_worker_count():
    runs = {w: Batches(Noisy(), INFO, 4, CPU, train=True, seed=3, num_workers=w) for w in (0, 2, 3)}
    first = {w: epoch(b, 1) for w, b in runs.items()}
    assert same(first[0], first[2]) and same(first[0], first[3])
    assert not same(first[0], epoch(runs[0], 2))  # another epoch: another order, other draws
    # a resume from batch 3 reads the same batches 3.. (the workers go on with the new plan)
    assert same(epoch(runs[2], 1, start=3), first[0][3:]) and same(epoch(runs[0], 1, start=3), first[0][3:])
    x, y = first[0][0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 1, 4, 4)


def test_reading_in_the_main_process_leaves_its_generators_alone():
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    for workers in (0, 2):
        epoch(Batches(Noisy(), INFO, 4, CPU, train=True, num_workers=workers))
        epoch(Batches(Noisy(), INFO, 5, CPU, train=False, num_workers=workers))
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_the_sample_key_and_seed_a_dataset_sees():
    train = epoch(Batches(Keyed(12), INFO, 4, CPU, train=True, seed=5, num_workers=2), 2)
    order = Batches(Keyed(12), INFO, 4, CPU, train=True, seed=5).indices(2)
    rows = torch.cat([x[:, 0, 0, :3] for x, _ in train]).long()
    assert rows[:, 0].tolist() == [5] * 12 and rows[:, 1].tolist() == [2] * 12
    assert rows[:, 2].tolist() == order.tolist()
    evaluation = epoch(Batches(Keyed(6), INFO, 4, CPU, train=False, seed=5, num_workers=0))
    assert torch.cat([x[:, 0, 0, 1] for x, _ in evaluation]).tolist() == [-1] * 6
    assert current_sample() is None  # only while trainkit asks for a sample
    assert sample_seed(5, 2, 3) == sample_seed(5, 2, 3) != sample_seed(5, 2, 4)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_exception_in_a_dataset_is_one_line_naming_the_sample(workers):
    batches = Batches(Failing(ValueError("no such file: x.npy")), INFO, 4, CPU, train=False, num_workers=workers)
    with pytest.raises(DataLoaderError) as info:
        epoch(batches)
    line = Failing.__getitem__.__code__.co_firstlineno + 2  # where `raise self.error` is
    assert str(info.value) == (
        f"reading sample 5 of the data set failed: ValueError: no such file: x.npy (test_loader.py:{line})"
    )
    batches = Batches(Failing(MemoryError()), INFO, 4, CPU, train=False, num_workers=workers)
    with pytest.raises(OutOfMemoryError, match="out of host memory while reading sample 5 of the data set; lower"):
        epoch(batches)


class Odd(Noisy):
    """Sample 5 is what a data set may hand back by mistake; the others are fine."""

    def __init__(self, odd):
        super().__init__(12)
        self.odd = odd

    def __getitem__(self, i: int):
        return self.odd if i == 5 else super().__getitem__(i)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_that_cannot_join_its_batch_is_named(workers):
    """Not torch.stack's "entry 1", nor the loss's IndexError after the batch was built."""
    cases = [
        (
            (torch.zeros(1, 5, 5), 0),
            "its input has shape (1, 5, 5), sample 4's (1, 4, 4); a batch stacks its inputs, so",
        ),
        (("x", 0), "its input is a str, not a tensor or an array"),
        (None, "is None, not an (input, target) pair"),
        ({"image": torch.zeros(1, 4, 4), "label": 0}, "is a dict, not an (input, target) pair"),
        ((torch.zeros(1, 4, 4), 3), "its target 3 is not a class index (num_classes is 3: 0 to 2)"),
        ((torch.zeros(1, 4, 4), -1), "its target -1 is not a class index (num_classes is 3: 0 to 2)"),
        ((torch.zeros(1, 4, 4), "cat"), "its target is a str, not a number, an array or a tensor"),
        ((torch.zeros(1, 4, 4), np.array([1, 2])), "its target has shape (2,), sample 4's (); a batch stacks"),
    ]
    for odd, message in cases:
        batches = Batches(Odd(odd), INFO, 4, CPU, train=False, num_workers=workers)
        with pytest.raises(DataLoaderError) as info:
            epoch(batches)
        assert str(info.value).startswith("sample 5 of the data set") and message in str(info.value), odd


def test_numpy_samples_are_float32_batches_with_their_targets():
    """numpy's float64 (its default) meets float32 weights; numpy scalars and arrays as targets."""

    class Numpy(Noisy):
        def __getitem__(self, i: int):
            return np.full((1, 4, 4), i, dtype=np.float64), (np.float64(i / 2), np.array([i, i]))[i % 2]

    regression = DatasetInfo("regression", (1, 4, 4), None)
    batches = Batches(Numpy(4), regression, 2, CPU, train=False, num_workers=0)
    with pytest.raises(DataLoaderError, match="sample 1 of the data set: its target has shape"):
        epoch(batches)

    class Scalars(Noisy):
        def __getitem__(self, i: int):
            return np.full((1, 4, 4), i, dtype=np.float64), np.float64(i / 2)

    (x, y), *_ = epoch(Batches(Scalars(4), regression, 4, CPU, train=False, num_workers=0))
    assert x.dtype == torch.float32 and x[:, 0, 0, 0].tolist() == [0, 1, 2, 3] and y.tolist() == [0, 0.5, 1, 1.5]

    class WithIds(Scalars):  # (input, target, id): what follows the pair is left alone, as before
        def __getitem__(self, i: int):
            return (*super().__getitem__(i), f"id-{i}")

    (x, y), *_ = epoch(Batches(WithIds(4), regression, 4, CPU, train=False, num_workers=0))
    assert y.tolist() == [0, 0.5, 1, 1.5]


@pytest.mark.slow
def test_a_worker_killed_by_the_system_is_named_with_its_signal():
    batches = Batches(Dying(), INFO, 4, CPU, train=False, num_workers=2)
    with pytest.raises(DataLoaderError) as info:
        epoch(batches)
    message = str(info.value)
    assert message.startswith("a data loader worker died while reading evaluation batches (pid ")
    assert "killed by SIGKILL (the system may have run out of memory)); lower data.num_workers" in message


def test_skipped_batches_are_never_read(tmp_path, monkeypatch):
    from trainkit.builtin.image_sources import ImageFiles

    root = write_folder(tmp_path / "data", train=8, test=2, classes=2)
    bundle = image_folder(root=str(root), seed=0, cache="off", mean=[0.5], std=[0.25])
    read: list[int] = []
    original = ImageFiles.read_batch

    def counting(self, indices):
        read.extend(indices.tolist())
        return original(self, indices)

    monkeypatch.setattr(ImageFiles, "read_batch", counting)
    batches = Batches(bundle.train, bundle.info, 3, CPU, train=True, num_workers=0)
    epoch(batches, 0, start=4)
    assert sorted(read) == sorted(batches.indices(0)[12:].tolist())


@pytest.mark.parametrize("workers", [0, 2])
def test_decoded_per_batch_equals_the_in_memory_cache_bit_for_bit(tmp_path, workers):
    root = write_folder(tmp_path / "data", train=10, test=3, classes=3, size=12, channels=3)
    cached = image_folder(root=str(root), seed=0, cache_dir=str(tmp_path / "cache"))
    files = image_folder(root=str(root), seed=0, cache="off")
    assert cached.info == files.info and torch.equal(cached.record["use"], files.record["use"])
    augment = Augment(2, True, ((0.35, 1.0), (0.75, 1.33)))
    memory = place(cached.train, CPU)
    a = Batches(memory, cached.info, 4, CPU, train=True, seed=1, augment=augment)
    b = Batches(files.train, files.info, 4, CPU, train=True, seed=1, augment=augment, num_workers=workers)
    assert a.in_memory and not b.in_memory
    assert same(epoch(a, 1), epoch(b, 1))
    test_a = Batches(place(cached.test, CPU), cached.info, 4, CPU, train=False)
    test_b = Batches(files.test, files.info, 4, CPU, train=False, num_workers=workers)
    assert same(epoch(test_a), epoch(test_b))
