"""Built-in data set builders. Each returns a DataBundle (see data.py).

Each declares its task where it is registered (`task=`), so `trainkit validate` knows which
metrics the run will record (early stopping is checked against them).

Real data sets are read from the original files under `root` in torchvision's layout
(`root/MNIST/raw/`, `root/FashionMNIST/raw/`, `root/cifar-10-batches-py/`), or directly
from `root`. torch is imported inside the builders to keep `trainkit ls` fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from trainkit.config import Seed
from trainkit.registry import DATASETS

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]

# Bytes held at once per generated value while a synthetic split is made (float32 noise,
# the templates it is added to and their sum), so sizes beyond memory fail in one line.
SYNTHETIC_BYTES_PER_VALUE = 12


def _check_fits(keys: str, values: int, what: str) -> None:
    """ConfigError naming `keys` when making `values` float32 values would not fit in this
    machine's memory (a typo'd n_train of 10**12 would otherwise die in the allocator)."""
    from trainkit.errors import ConfigError
    from trainkit.training.loader import host_memory

    total = host_memory()
    need = values * SYNTHETIC_BYTES_PER_VALUE
    if total is not None and need > total:
        raise ConfigError(
            f"{keys}: {what} take about {need / 1e9:,.1f} GB of memory to make; this machine has {total / 1e9:,.1f} GB"
        )


MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _mnist_family(
    dataset: str,
    folder: str,
    torchvision_class: str,
    root: str,
    download: bool,
    mean: float,
    std: float,
    class_names: list[str],
):
    import torch

    from trainkit.builtin.readers import ensure_files, read_idx
    from trainkit.errors import DataError
    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit

    base = Path(root).expanduser()
    folders = [base / folder / "raw", base]
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def fetch() -> None:
        import torchvision.datasets

        for train in (True, False):
            getattr(torchvision.datasets, torchvision_class)(str(base), train=train, download=True)

    found = ensure_files(dataset, [n for pair in files.values() for n in pair], folders, download, fetch)
    splits = {}
    for split, (image_name, label_name) in files.items():
        images, labels = read_idx(found[image_name]), read_idx(found[label_name])
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise DataError(
                f"{found[image_name]}: {tuple(images.shape)} images do not match "
                f"{tuple(labels.shape)} labels in {found[label_name]}"
            )
        splits[split] = TensorSplit(images.unsqueeze(1).contiguous(), labels.to(torch.int64))
    shape = tuple(splits["train"].inputs.shape[1:])
    info = DatasetInfo("classification", shape, 10, class_names=class_names, mean=(mean,), std=(std,))
    return DataBundle(info, splits["train"], splits["test"])


@DATASETS.register("mnist", task="classification")
def mnist(root: str = "data", download: bool = True):
    """MNIST handwritten digits, 1x28x28, 60k train / 10k test."""
    return _mnist_family("mnist", "MNIST", "MNIST", root, download, 0.1307, 0.3081, MNIST_CLASSES)


@DATASETS.register("fashion_mnist", task="classification")
def fashion_mnist(root: str = "data", download: bool = True):
    """Fashion-MNIST clothing images, 1x28x28, 60k train / 10k test."""
    return _mnist_family(
        "fashion_mnist", "FashionMNIST", "FashionMNIST", root, download, 0.2860, 0.3530, FASHION_MNIST_CLASSES
    )


@DATASETS.register("cifar10", task="classification")
def cifar10(root: str = "data", download: bool = True):
    """CIFAR-10 colour images, 3x32x32, 50k train / 10k test (python batches)."""
    from trainkit.builtin.readers import cifar_split, ensure_files
    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit

    base = Path(root).expanduser()
    folders = [base / "cifar-10-batches-py", base]
    train_names = [f"data_batch_{i}" for i in range(1, 6)]

    def fetch() -> None:
        import torchvision.datasets

        torchvision.datasets.CIFAR10(str(base), train=True, download=True)

    found = ensure_files("cifar10", train_names + ["test_batch"], folders, download, fetch)
    train = TensorSplit(*cifar_split([found[n] for n in train_names]))
    test = TensorSplit(*cifar_split([found["test_batch"]]))
    info = DatasetInfo(
        "classification",
        (3, 32, 32),
        10,
        class_names=CIFAR10_CLASSES,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )
    return DataBundle(info, train, test)


@DATASETS.register("synthetic_regression", task="regression")
def synthetic_regression(
    seed: int,
    n_train: Positive = 1000,
    n_test: Positive = 200,
    in_features: Positive = 1,
    weight: float | list[float] = 2.0,
    bias: float = 0.0,
    noise: NonNegative = 0.01,
    data_seed: Seed | None = None,
):
    """y = w.x + b + noise with x ~ N(0, 1), seeded (the classic y = 2x example by default)."""
    import torch

    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit

    _check_fits(
        "data.n_train, data.n_test",
        (n_train + n_test) * (in_features + 1),
        f"{n_train + n_test:,} rows of {in_features} feature{'' if in_features == 1 else 's'}",
    )
    gen = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
    w = torch.tensor(weight if isinstance(weight, list) else [weight] * in_features, dtype=torch.float32)
    if len(w) != in_features:
        from trainkit.errors import ConfigError

        raise ConfigError(f"data.weight: has {len(w)} values for in_features={in_features}")

    def split(n: int) -> TensorSplit:
        x = torch.randn(n, in_features, generator=gen)
        y = x @ w[:, None] + bias + noise * torch.randn(n, 1, generator=gen)
        return TensorSplit(x, y)

    return DataBundle(DatasetInfo("regression", (in_features,), num_outputs=1), split(n_train), split(n_test))


@DATASETS.register("synthetic_images", task="classification")
def synthetic_images(
    seed: int,
    num_classes: Annotated[int, Field(ge=2)] = 10,
    channels: Positive = 1,
    size: Annotated[int, Field(ge=4)] = 28,
    n_train: Positive = 2000,
    n_test: Positive = 500,
    noise: NonNegative = 60.0,
    data_seed: Seed | None = None,
):
    """Seeded random images: one random template per class plus pixel noise (for quick checks)."""
    import torch

    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit

    _check_fits(
        "data.n_train, data.n_test",
        (n_train + n_test) * channels * size * size,
        f"{n_train + n_test:,} images of {channels}x{size}x{size}",
    )
    gen = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
    templates = torch.rand(num_classes, channels, size, size, generator=gen) * 255

    def split(n: int) -> TensorSplit:
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        pixels = templates[labels] + noise * torch.randn(n, channels, size, size, generator=gen)
        return TensorSplit(pixels.clamp(0, 255).round().to(torch.uint8), labels)

    train, test = split(n_train), split(n_test)
    scaled = train.inputs.float().div(255).transpose(0, 1).reshape(channels, -1)
    info = DatasetInfo(
        "classification",
        (channels, size, size),
        num_classes,
        class_names=[f"class_{i}" for i in range(num_classes)],
        mean=tuple(scaled.mean(1).tolist()),
        std=tuple(scaled.std(1).tolist()),
    )
    return DataBundle(info, train, test)
