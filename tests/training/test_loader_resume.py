"""Exact resume through the loader: a run interrupted mid-epoch with N workers and resumed with
M ends bit-identical to the uninterrupted run, for image folders and for a user's Dataset; and
decoding per batch trains exactly as the in-memory cache does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import torch

import trainkit
from conftest import TRAINKIT, assert_same_tensors, load_ckpt, metric_history, subprocess_env, write_config
from helpers_images import image_config, write_folder
from trainkit.errors import TrainingInterrupted
from trainkit.registry import DATASETS
from trainkit.training.batches import epoch_permutation
from trainkit.training.data import DataBundle
from trainkit.training.session import Session

# 30 training images / batch 8 = 4 batches per epoch, 2 epochs = 8 steps
AUGMENT = {"crop_padding": 1, "hflip": True, "random_resized_crop": {"scale": [0.35, 1]}}


class NoisyImages(torch.utils.data.Dataset):
    """A user's Dataset: per-class templates, with noise drawn from torch's global generator."""

    def __init__(self, n: int, offset: int = 0):
        self.n, self.offset = n, offset
        self.templates = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        label = (i + self.offset) % 3
        return self.templates[label] + 0.3 * torch.randn(1, 8, 8), label


def noisy_data(seed: int, n: int = 30):
    """Registered by the fixture below, as a user's plugin would be."""
    return DataBundle.from_datasets(NoisyImages(n), NoisyImages(n // 2, offset=1), num_classes=3)


@pytest.fixture
def registered(isolated_registries):
    DATASETS.register("noisy_data")(noisy_data)


def _config(tmp_path, source: str, workers: int, name: str = "run"):
    if source == "images":
        root = tmp_path.parent / "shared_data"
        if not root.exists():
            write_folder(root, train=10, test=3, classes=3)
        config = image_config(tmp_path, root, cache="off", num_workers=workers, augment=AUGMENT)
    else:
        config = image_config(tmp_path, tmp_path, num_workers=workers)
        config["data"] = {"name": "noisy_data", "batch_size": 8, "eval_batch_size": 10, "num_workers": workers}
    config["name"] = name
    config["model"]["dropout"] = 0.25  # the global generator drives dropout: loading must not touch it
    return config


def _final(run_dir):
    ckpt = load_ckpt(run_dir / "last.pt")
    for wall_clock in ("saved_at", "metrics_offset", "config"):
        ckpt.pop(wall_clock)
    return ckpt


@contextlib.contextmanager
def _stop_at(step: int) -> Iterator[None]:
    """The stop request SIGINT/SIGTERM would set, right after optimizer step `step`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Session, "stop_requested", lambda self, state: state.step == step)
        yield


def _interrupted(tmp_path, config, step, resume_workers):
    with _stop_at(step), pytest.raises(TrainingInterrupted):
        trainkit.train(config, quiet=True)
    run_dir = tmp_path / "ckpt" / config["name"]
    assert load_ckpt(run_dir / "last.pt")["step"] == step
    trainkit.resume(run_dir, [f"data.num_workers={resume_workers}"], quiet=True)
    return run_dir


@pytest.mark.parametrize("source", ["images", "dataset"])
@pytest.mark.parametrize(("before", "after"), [(3, 0), (0, 2)])
def test_killed_with_n_workers_resumed_with_m_ends_bit_identical(tmp_path, request, source, before, after):
    if source == "dataset":
        request.getfixturevalue("registered")
    reference = trainkit.train(_config(tmp_path, source, before, "ref"), quiet=True)
    run_dir = _interrupted(tmp_path, _config(tmp_path, source, before), 2, after)
    assert_same_tensors(_final(run_dir), _final(tmp_path / "ckpt" / "ref"))
    assert metric_history(run_dir) == metric_history(tmp_path / "ckpt" / "ref")
    assert reference["epochs"] == 2


@pytest.mark.slow
def test_resumed_twice_across_epochs_with_other_worker_counts(tmp_path):
    trainkit.train(_config(tmp_path, "images", 2, "ref"), quiet=True)
    run_dir = tmp_path / "ckpt" / "run"
    with _stop_at(1), pytest.raises(TrainingInterrupted):
        trainkit.train(_config(tmp_path, "images", 2), quiet=True)
    with _stop_at(6), pytest.raises(TrainingInterrupted):
        trainkit.resume(run_dir, ["data.num_workers=3"], quiet=True)
    trainkit.resume(run_dir, ["data.num_workers=0"], quiet=True)
    assert_same_tensors(_final(run_dir), _final(tmp_path / "ckpt" / "ref"))


def test_decoding_per_batch_trains_exactly_as_the_in_memory_cache(tmp_path):
    cached = _config(tmp_path, "images", 2, "cached") | {}
    cached["data"] = {**cached["data"], "cache": "auto"}
    trainkit.train(cached, quiet=True)
    trainkit.train(_config(tmp_path, "images", 2, "files"), quiet=True)
    assert_same_tensors(_final(tmp_path / "ckpt" / "files"), _final(tmp_path / "ckpt" / "cached"))
    assert metric_history(tmp_path / "ckpt" / "files") == metric_history(tmp_path / "ckpt" / "cached")


class DiesOnce(NoisyImages):
    """Its loader worker is killed (as by the out-of-memory killer) reading sample `die_at`, once."""

    def __init__(self, n: int, marker: str, die_at: int, offset: int = 0):
        super().__init__(n, offset)
        self.marker, self.die_at = marker, die_at

    def __getitem__(self, i: int):
        if i == self.die_at and torch.utils.data.get_worker_info() is not None:
            try:
                os.unlink(self.marker)
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(i)


def dying_data(seed: int, marker: str, split: str, die_at: int):
    train = DiesOnce(30, marker, die_at if split == "train" else -1)
    test = DiesOnce(15, marker, die_at if split == "test" else -1, offset=1)
    return DataBundle.from_datasets(train, test, num_classes=3)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_worker_killed_mid_run_leaves_a_checkpoint_that_resumes_exactly(tmp_path, isolated_registries, cli, split):
    DATASETS.register("dying_data")(dying_data)
    order = epoch_permutation(30, 0, 0).tolist()
    die_at = order[8 * 2 + 1] if split == "train" else 3  # in batch 3 of epoch 1, or in the first evaluation
    marker = tmp_path / "die-once"

    def config(name):
        base = _config(tmp_path, "images", 2, name)
        base["data"] = {"name": "dying_data", "marker": str(marker), "split": split, "die_at": die_at}
        base["data"] |= {"batch_size": 8, "eval_batch_size": 5, "num_workers": 2}
        return base

    trainkit.train(config("ref"), quiet=True)
    marker.write_text("")
    code, _, err = cli("train", write_config(tmp_path / "run.yaml", config("run")))
    assert code == 1 and "killed by SIGKILL (the system may have run out of memory)" in err.splitlines()[-1]
    run_dir = tmp_path / "ckpt" / "run"
    # batches already read by the killed worker but not yet sent are lost with it: the checkpoint
    # holds every batch trained before the failure was seen (the whole epoch when evaluating)
    batch = load_ckpt(run_dir / "last.pt")["state"]["batch"]
    assert batch <= 2 if split == "train" else batch == 4
    code, _, err = cli("resume", run_dir, "-q")
    assert code == 0, err
    assert_same_tensors(_final(run_dir), _final(tmp_path / "ckpt" / "ref"))
    assert metric_history(run_dir) == metric_history(tmp_path / "ckpt" / "ref")


SLOW_PLUGIN = """
import time
import torch
from trainkit import DATASETS, DataBundle

class Slow(torch.utils.data.Dataset):  # reading is the bottleneck: the main process waits on workers
    def __init__(self, n, offset=0):
        self.n, self.offset = n, offset
        self.templates = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        time.sleep(0.03)
        label = (i + self.offset) % 3
        return self.templates[label] + 0.3 * torch.randn(1, 8, 8), label

@DATASETS.register("slow_data")
def slow_data(seed: int):
    return DataBundle.from_datasets(Slow(64), Slow(16, 1), num_classes=3)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_whole_process_group_stops_and_resumes_exactly(tmp_path, signum):
    """Ctrl-C (and a SIGTERM to every process of the job) reach the loader's workers too, while
    the main process waits for a batch: the run still stops as interrupted, with a checkpoint,
    and resumes to the uninterrupted result."""
    (tmp_path / "slow_plugin.py").write_text(SLOW_PLUGIN)

    def command(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*TRAINKIT, *args], cwd=tmp_path, env=subprocess_env(), start_new_session=True,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    for name in ("ref", "run"):
        config = _config(tmp_path, "dataset", 2, name)
        config["imports"] = ["slow_plugin"]
        config["data"] = {"name": "slow_data", "batch_size": 8, "eval_batch_size": 8, "num_workers": 2}
        config["trainer"]["log_every"] = 1
        write_config(tmp_path / f"{name}.yaml", config)
    assert command("train", "ref.yaml").wait(timeout=600) == 0
    process = command("train", "run.yaml")
    metrics = tmp_path / "ckpt" / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signum)  # the process and its loader workers, as a terminal or a scheduler does
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err
    assert "resume with: trainkit resume" in err and "Traceback" not in err
    assert command("resume", "ckpt/run", "-q", "--import", "slow_plugin").wait(timeout=600) == 0
    assert_same_tensors(_final(tmp_path / "ckpt" / "run"), _final(tmp_path / "ckpt" / "ref"))


@pytest.mark.slow
def test_a_loader_failure_while_a_stop_is_requested_is_an_interruption(tmp_path, isolated_registries, monkeypatch):
    """When the workers died of the same signal that asked the run to stop (a SIGTERM to the
    whole process group), the run is interrupted (exit 130/143, checkpoint saved), not failed."""
    from trainkit.errors import DataLoaderError
    from trainkit.training.loader import Loader

    DATASETS.register("dying_data")(dying_data)
    marker = tmp_path / "die-once"
    marker.write_text("")
    config = _config(tmp_path, "images", 2)
    die_at = epoch_permutation(30, 0, 0).tolist()[8 * 2 + 1]
    config["data"] = {"name": "dying_data", "marker": str(marker), "split": "train", "die_at": die_at}
    config["data"] |= {"batch_size": 8, "eval_batch_size": 5, "num_workers": 2}
    signalled = {"stop": False}
    read = Loader.__call__

    def reading(self, *args):
        try:
            yield from read(self, *args)
        except DataLoaderError:
            signalled["stop"] = True  # what the signal handler would have set
            raise

    monkeypatch.setattr(Loader, "__call__", reading)
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: signalled["stop"])
    with pytest.raises(TrainingInterrupted) as info:
        trainkit.train(config, quiet=True)
    assert load_ckpt(tmp_path / "ckpt" / "run" / "last.pt")["step"] == info.value.step
