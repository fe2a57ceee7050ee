"""trainkit's training loop against a hand-written PyTorch loop (and Lightning, if installed).

    python bench/overhead.py                        # the `cnn` model on real MNIST from ../shared/data
    python bench/overhead.py --data synthetic       # no data set files needed
    python bench/overhead.py --device cuda --precision bf16 --compile
    python bench/overhead.py --model torchvision.resnet18 --data random --size 32 --channels 3 --batch-size 128

Every contender trains the same model from the same initial weights on the same batches
(the same sample order) with the same optimizer, for --steps steps per measurement. They
take turns in one process (A B C, B C A, C A B, ...) so that whatever else the machine does
hits them alike, and the result is the median over rounds of each round's ratio of samples
per second, trainkit / hand-written. Target: >= 0.97. A first, untimed round warms up
(allocator, cuDNN autotuning, torch.compile).

"trainkit" here is trainkit's real code path: components built by trainkit.training.build from a
validated config, steps run by trainkit.training.loop.train_one_epoch (with trainer.limit_batches
= --steps) and an Events object that does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from _common import DEFAULT_ROOT, machine_line, median, print_table
from trainkit.config import resolve
from trainkit.training.batches import epoch_permutation
from trainkit.training.build import build_model, build_run, load_data, prepare_device
from trainkit.training.data import DataBundle
from trainkit.training.distributed import DistContext, resolve_device
from trainkit.training.loop import TrainState, train_one_epoch
from trainkit.training.rng import seed_everything

TARGET = 0.97  # trainkit / hand-written samples per second, median over rounds
LOG_EVERY = 50  # steps between loss reads (host-device syncs), in every contender


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    return check_args(p, p.parse_args(argv))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="cnn", help="a trainkit model that takes images: cnn, mlp, fast_cnn")
    p.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the model (YAML value), e.g. hidden=[16] for a tiny mlp that shows "
        "the loop's fixed cost per step (repeatable)",
    )
    p.add_argument(
        "--data",
        default="mnist",
        choices=["mnist", "fashion_mnist", "synthetic", "random"],
        help="real data read by trainkit's reader from --root, trainkit's synthetic_images, or uniformly "
        "random uint8 images (cheap to make at any size: --size, --channels)",
    )
    p.add_argument("--size", type=int, default=28, help="image size of --data synthetic / random")
    p.add_argument("--channels", type=int, default=1, help="image channels of --data synthetic / random")
    p.add_argument("--channels-last", action="store_true", help="trainer.channels_last, and the same by hand")
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="folder holding MNIST/raw, FashionMNIST/raw")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per measurement")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (each contender once per round)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model in every contender")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-lightning", action="store_true", help="leave Lightning out even if it is installed")
    p.add_argument("--seed", type=int, default=0)
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be at least 1")
    args.root = str(Path(args.root).resolve())
    return args


def model_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"error: --model-option {pair}: expected KEY=VALUE, e.g. hidden=[16]")
        options[key.strip()] = yaml.safe_load(value)
    return options


# ---------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for queued device work: a timer read before it would miss the tail of the run."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], float]) -> tuple[float, float]:
    """(seconds, value of `work`) with the device drained before both timer reads."""
    synchronize(device)
    start = time.perf_counter()
    value = work()
    synchronize(device)
    return time.perf_counter() - start, value


# ---------------------------------------------------------------- contenders
# Each has a `name` and `train(epoch) -> (seconds, mean training loss)` that runs --steps
# steps on the batches of `epoch` (the same batches for every contender).


class NoEvents:
    """The loop's Events with nothing behind them: no files, no progress bar, never a stop."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def save(self, state: TrainState, is_best: bool) -> None:
        pass

    def stop_requested(self, state: TrainState) -> bool:
        return False

    def progress(self, epoch: int, total: int, start: int) -> Any:
        return None


class Trainkit:
    name = "trainkit"

    def __init__(self, cfg: Any, bundle: DataBundle, module: torch.nn.Module, device: torch.device):
        self.run = build_run(cfg, bundle, module, device, DistContext())
        self.device, self.events = device, NoEvents()

    def train(self, epoch: int) -> tuple[float, float]:
        return timed(self.device, lambda: train_one_epoch(self.run, TrainState(epoch=epoch), self.events))


class Handwritten:
    """The loop a careful person writes: data on the device, one sync per LOG_EVERY steps."""

    name = "hand-written"

    def __init__(self, module: torch.nn.Module, bundle: DataBundle, args: argparse.Namespace, device: torch.device):
        self.module, self.device, self.args = module, device, args
        self.model = torch.compile(module) if args.compile else module
        self.optimizer = torch.optim.Adam(module.parameters(), lr=args.lr)
        self.layout = torch.channels_last if args.channels_last else torch.contiguous_format
        self.images = bundle.train.inputs.to(device)  # uint8, the whole split
        self.labels = bundle.train.targets.to(device)
        shape = (1, -1) + (1,) * (self.images.dim() - 2)
        self.mean = torch.tensor(bundle.info.mean, device=device).view(shape)
        self.std = torch.tensor(bundle.info.std, device=device).view(shape)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.args.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train(self, epoch: int) -> tuple[float, float]:
        return timed(self.device, lambda: self._steps(epoch))

    def _steps(self, epoch: int) -> float:
        steps, size = self.args.steps, self.args.batch_size
        # trainkit's permutation, so both loops see the same batches and their losses compare
        order = epoch_permutation(len(self.labels), self.args.seed, epoch).to(self.device)
        self.module.train()
        window, total = torch.zeros((), device=self.device), 0.0
        for step in range(steps):
            idx = order[step * size : (step + 1) * size]
            x = ((self.images[idx].float() / 255 - self.mean) / self.std).contiguous(memory_format=self.layout)
            with self.autocast():
                output = self.model(x)
            loss = F.cross_entropy(output.float(), self.labels[idx])
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            window += loss.detach()
            if (step + 1) % LOG_EVERY == 0:
                total += window.item()  # the only sync: what logging the window's mean costs
                window.zero_()
        return (total + window.item()) / steps


def lightning_module() -> Any:
    """The `lightning.pytorch` module, or None: Lightning is optional, never a dependency."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return __import__(name, fromlist=["Trainer"])
        except ImportError:
            continue
    return None


class Lightning:
    """Lightning's Trainer on the same model, fed the same device-resident batches."""

    name = "lightning"

    def __init__(
        self, pl: Any, module: torch.nn.Module, hand: Handwritten, args: argparse.Namespace, device: torch.device
    ):
        self.pl, self.hand, self.args, self.device = pl, hand, args, device
        logging.getLogger(pl.__name__).setLevel(logging.ERROR)  # the per-Trainer "GPU available" lines
        warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning)\.")
        self.lit = _lit_classifier(pl, module, hand, args)
        self.clock = _lit_clock(pl, device)

    def train(self, epoch: int) -> tuple[float, float]:
        trainer = self.pl.Trainer(
            accelerator="gpu" if self.device.type == "cuda" else "cpu",
            devices=1,
            max_steps=self.args.steps,
            precision="bf16-mixed" if self.args.precision == "bf16" else "32-true",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[self.clock],
        )
        self.lit.window.zero_()
        trainer.fit(self.lit, train_dataloaders=_EpochBatches(self.hand, epoch))
        # from on_train_start to on_train_end: the steps, not the Trainer's set-up
        return self.clock.seconds, self.lit.window.item() / self.args.steps


class _EpochBatches:
    """--steps (uint8 images, labels) batches of one epoch, indexed on the device."""

    def __init__(self, hand: Handwritten, epoch: int):
        self.hand, self.epoch = hand, epoch

    def __len__(self) -> int:
        return self.hand.args.steps

    def __iter__(self):
        hand, size = self.hand, self.hand.args.batch_size
        order = epoch_permutation(len(hand.labels), hand.args.seed, self.epoch).to(hand.device)
        for step in range(len(self)):
            idx = order[step * size : (step + 1) * size]
            yield hand.images[idx], hand.labels[idx]


def _lit_classifier(pl: Any, module: torch.nn.Module, hand: Handwritten, args: argparse.Namespace) -> Any:
    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.compile(module) if args.compile else module
            self.optimizer = torch.optim.Adam(module.parameters(), lr=args.lr)  # kept across rounds
            self.register_buffer("window", torch.zeros(()), persistent=False)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            images, labels = batch
            loss = F.cross_entropy(self.net((images.float() / 255 - hand.mean) / hand.std).float(), labels)
            self.window += loss.detach()
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return self.optimizer

    return Classifier()


def _lit_clock(pl: Any, device: torch.device) -> Any:
    class Clock(pl.Callback):
        seconds = 0.0

        def on_train_start(self, trainer: Any, lit: Any) -> None:
            synchronize(device)
            self.started = time.perf_counter()

        def on_train_end(self, trainer: Any, lit: Any) -> None:
            synchronize(device)
            self.seconds = time.perf_counter() - self.started

    return Clock()


# ---------------------------------------------------------------- set-up


def random_images(seed: int, n_train: int = 1024, size: int = 32, channels: int = 3, num_classes: int = 10):
    """Uniformly random uint8 images and labels: data for timing, made in one draw at any size."""
    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit

    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> TensorSplit:
        images = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
        return TensorSplit(images, torch.randint(0, num_classes, (n,), generator=gen))

    shape = (channels, size, size)
    info = DatasetInfo("classification", shape, num_classes, mean=(0.5,) * channels, std=(0.29,) * channels)
    return DataBundle(info, split(n_train), split(64))


def trainkit_config(args: argparse.Namespace) -> Any:
    n_train = args.steps * args.batch_size  # exactly enough samples for --steps full batches
    if args.data == "synthetic":
        data = {"name": "synthetic_images", "n_train": n_train, "n_test": 100, "size": args.size}
        data["channels"] = args.channels
    elif args.data == "random":
        from trainkit.registry import DATASETS

        if "bench_random_images" not in DATASETS:
            DATASETS.register("bench_random_images")(random_images)
        data = {"name": "bench_random_images", "n_train": n_train, "size": args.size, "channels": args.channels}
    else:
        data = {"name": args.data, "root": args.root, "download": False}
    return resolve(
        {
            "name": "bench_overhead",
            "seed": args.seed,
            "model": {"name": args.model, **model_options(args.model_option)},
            "data": {**data, "batch_size": args.batch_size},
            "optimizer": {"name": "adam", "lr": args.lr},
            "trainer": {
                "epochs": 1,
                "device": args.device,
                "limit_batches": args.steps,
                "log_every": LOG_EVERY,
                "precision": args.precision,
                "compile": args.compile,
                "channels_last": args.channels_last,
                "host_memory": "keep",
            },  # what the trainkit command does on the CPU
        },
        source="bench/overhead.py",
    )


def build_contenders(args: argparse.Namespace) -> tuple[list[Any], torch.device, DataBundle]:
    cfg = trainkit_config(args)
    device = resolve_device(cfg.trainer.device, DistContext())
    prepare_device(cfg, device)  # what trainkit's build does first (CPU: keeps freed host memory for reuse)
    seed_everything(args.seed)
    bundle = load_data(cfg)
    if args.steps * args.batch_size > len(bundle.train):
        sys.exit(
            f"error: --steps {args.steps} x --batch-size {args.batch_size} needs "
            f"{args.steps * args.batch_size} samples; {args.data} has {len(bundle.train)}"
        )
    module = build_model(cfg, bundle.info, device)
    initial = copy.deepcopy(module)  # every contender starts from these weights
    hand = Handwritten(copy.deepcopy(initial), bundle, args, device)
    contenders = [Trainkit(cfg, bundle, module, device), hand]
    pl = None if args.no_lightning else lightning_module()
    if pl is not None:
        contenders.append(Lightning(pl, copy.deepcopy(initial), hand, args, device))
    return contenders, device, bundle


# ---------------------------------------------------------------- main


def main() -> None:
    run(parse_args())


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and print; returns {"median": {name: ratio}, "speeds": {name: [samples/s per round]}, ...}."""
    if args.threads:
        torch.set_num_threads(args.threads)
    contenders, device, bundle = build_contenders(args)
    names = [c.name for c in contenders]
    print(machine_line(device))
    model = " ".join([args.model] + args.model_option)
    print(
        f"setup: model {model}, data {args.data} ({len(bundle.train)} training samples), "
        f"batch {args.batch_size}, Adam lr {args.lr}, {args.steps} steps per measurement, "
        f"{args.rounds} rounds + 1 warm-up, {args.precision}, {'compiled' if args.compile else 'eager'}"
        f"{', channels_last' if args.channels_last else ''}"
    )
    if "lightning" not in names and not args.no_lightning:
        print("lightning: not installed, column left out")
    print()

    samples = args.steps * args.batch_size
    others = [n for n in names if n != "hand-written"]
    headers = ["round"] + [f"{n} samples/s" for n in names] + [f"{n} / hand-written" for n in others]
    rows: list[list[Any]] = []
    ratios: dict[str, list[float]] = {n: [] for n in names}
    losses: dict[str, list[float]] = {n: [] for n in names}
    speeds_all: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        speeds = {}
        first = round_ % len(contenders)  # who goes first rotates, so none always follows the same one
        for contender in contenders[first:] + contenders[:first]:
            seconds, loss = contender.train(round_)
            speeds[contender.name] = samples / seconds
            if round_:
                speeds_all[contender.name].append(samples / seconds)
            losses[contender.name].append(loss)
        for n in names:
            ratios[n].append(speeds[n] / speeds["hand-written"])
        rows.append(
            ["warm-up" if round_ == 0 else round_] + [speeds[n] for n in names] + [ratios[n][-1] for n in others]
        )
        print(f"  round {round_} done", file=sys.stderr, flush=True)
    medians = {n: median(r[1:]) for n, r in ratios.items()}
    rows.append(["median"] + [None] * len(names) + [medians[n] for n in others])
    print_table(headers, rows)

    print()
    # Same weights, same batches, same optimizer: the losses agree unless the work differs.
    # Only to rounding: trainkit normalises with one fused multiply-add, and the difference
    # grows step by step, so the first round is the sharpest check (about 3 digits on MNIST).
    print(
        "mean training loss of the first round (should agree closely): "
        + ", ".join(f"{n} {losses[n][0]:.5f}" for n in names)
    )
    verdict = "met" if medians["trainkit"] >= TARGET else "NOT met"
    print(
        f"median trainkit / hand-written: {medians['trainkit']:.3f} "
        f"(rounds {min(ratios['trainkit'][1:]):.3f} to {max(ratios['trainkit'][1:]):.3f}); "
        f"target >= {TARGET}: {verdict}"
    )
    if "lightning" in medians:
        print(f"median lightning / hand-written: {medians['lightning']:.3f}")
    return {"median": medians, "speeds": speeds_all, "ratios": ratios, "device": device, "contenders": contenders}


if __name__ == "__main__":
    main()
