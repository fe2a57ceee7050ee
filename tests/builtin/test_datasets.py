"""Data set readers and builders on tiny files the tests write, and on the real files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, CodePayload, make_cifar_root, make_mnist_root, write_idx
from trainkit.builtin.datasets import cifar10, fashion_mnist, mnist, synthetic_images, synthetic_regression
from trainkit.builtin.readers import read_idx
from trainkit.errors import DataError


def _snapshot(root):
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    assert torch.equal(read_idx(path), torch.from_numpy(array))


def test_truncated_idx_names_the_file_and_the_sizes(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value) == (
        f"{path}: truncated or damaged: the header promises 7840 bytes of data for "
        "shape (10, 28, 28), the file holds 984"
    )


def test_truncated_gzip_is_a_data_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (50, 28, 28))
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", noise)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=f"^{path}: cannot read .*damaged or truncated"):
        read_idx(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"hello world, not idx")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("layout", ["torchvision", "flat"])
def test_mnist_reads_both_layouts_and_writes_nothing(tmp_path, layout):
    make_mnist_root(tmp_path, n_train=30, n_test=20)
    root = tmp_path
    if layout == "flat":
        root = tmp_path / "MNIST" / "raw"
    before = _snapshot(tmp_path)
    bundle = mnist(str(root), download=False)
    assert _snapshot(tmp_path) == before
    assert bundle.train.inputs.shape == (30, 1, 28, 28) and bundle.train.inputs.dtype == torch.uint8
    assert bundle.test.targets.shape == (20,) and bundle.test.targets.dtype == torch.int64
    assert bundle.info.task == "classification" and bundle.info.num_classes == 10
    assert bundle.info.input_shape == (1, 28, 28)


def test_fashion_mnist_reads_plain_files(tmp_path):
    make_mnist_root(tmp_path, folder="FashionMNIST", compress=False)
    bundle = fashion_mnist(str(tmp_path), download=False)
    assert bundle.info.class_names[9] == "Ankle boot" and len(bundle.train) == 64


def test_missing_files_without_download_say_what_was_expected_where(tmp_path):
    with pytest.raises(DataError) as info:
        mnist(str(tmp_path), download=False)
    assert str(info.value) == (
        "mnist: files not found: expected train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (plain or .gz) in {tmp_path}/MNIST/raw or {tmp_path}; "
        "set data.download=true to fetch them"
    )


def test_missing_files_with_a_failing_download(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\n<urlopen error [Errno -2] Name or service not known>"
        )

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as info:
        mnist(str(tmp_path), download=True)
    message = str(info.value)
    assert message.startswith("mnist: files not found: expected train-images-idx3-ubyte")
    assert message.endswith("the download failed (<urlopen error [Errno -2] Name or service not known>)")


def test_cifar10_batches(tmp_path):
    make_cifar_root(tmp_path, per_batch=12)
    bundle = cifar10(str(tmp_path), download=False)
    assert bundle.train.inputs.shape == (60, 3, 32, 32) and bundle.test.inputs.shape == (12, 3, 32, 32)
    assert bundle.info.input_shape == (3, 32, 32) and bundle.info.class_names[0] == "airplane"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        original = pickle.load(f, encoding="bytes")
    expected = torch.from_numpy(original[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(bundle.test.inputs, expected)
    assert bundle.test.targets.tolist() == original[b"labels"]


def test_cifar_reader_refuses_pickled_code_without_running_it(tmp_path):
    make_cifar_root(tmp_path, per_batch=4)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3], b"x": CodePayload(marker)}
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump(evil, f, protocol=2)
    with pytest.raises(DataError, match="data_batch_3: refused: global 'posix.system' is forbidden in a CIFAR batch"):
        cifar10(str(tmp_path), download=False)
    assert not marker.exists()


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(
        DataError,
        match=r"^cifar10: files not found: expected data_batch_1, .*test_batch .*"
        r"cifar-10-batches-py or .*; set data.download=true",
    ):
        cifar10(str(tmp_path), download=False)


def test_truncated_cifar_batch(tmp_path):
    make_cifar_root(tmp_path, per_batch=4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR batch"):
        cifar10(str(tmp_path), download=False)


def test_synthetic_data_is_seeded():
    a, b = synthetic_images(seed=1, n_train=10, n_test=5), synthetic_images(seed=1, n_train=10, n_test=5)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.targets, b.test.targets)
    c = synthetic_images(seed=2, n_train=10, n_test=5)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    reg = synthetic_regression(seed=0, noise=0.0)
    assert torch.allclose(reg.train.targets, 2 * reg.train.inputs)
    assert reg.info.task == "regression" and reg.info.input_shape == (1,)


# ---------------------------------------------------------------- real data

needs_real_data = pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no ../shared/data")


@pytest.mark.realdata
@needs_real_data
@pytest.mark.parametrize("builder,first_labels", [(mnist, [5, 0, 4, 1, 9]), (fashion_mnist, [9, 0, 0, 3, 0])])
def test_real_files_read_completely(builder, first_labels):
    bundle = builder(str(SHARED_DATA), download=False)
    assert bundle.train.inputs.shape == (60000, 1, 28, 28) and bundle.test.inputs.shape == (10000, 1, 28, 28)
    assert bundle.train.targets[:5].tolist() == first_labels
    assert torch.bincount(bundle.test.targets).sum() == 10000 and bundle.test.targets.max() == 9


def test_synthetic_sets_beyond_this_machines_memory_are_a_config_error(monkeypatch):
    import os

    from trainkit.errors import ConfigError

    sysconf = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 2**30 // 4096 if name == "SC_PHYS_PAGES" else sysconf(name))
    with pytest.raises(ConfigError) as info:  # 1 GiB of memory here: 200,000 MNIST-sized images need ~1.9 GB
        synthetic_images(seed=0, n_train=200_000, n_test=500)
    assert str(info.value) == (
        "data.n_train, data.n_test: 200,500 images of 1x28x28 take about 1.9 GB of memory to make; "
        "this machine has 1.1 GB"
    )
    with pytest.raises(ConfigError, match=r"^data.n_train, data.n_test: 100,000,200 rows of 3 features take about"):
        synthetic_regression(seed=0, n_train=10**8, in_features=3)
    assert len(synthetic_images(seed=0, n_train=64, n_test=8).train) == 64
