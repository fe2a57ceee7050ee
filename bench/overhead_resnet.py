"""torchvision ResNets side by side: trainkit's loop against a hand-written loop (bench/overhead.py).

    python bench/overhead_resnet.py                # CPU: ResNet-18 at 32x32, batch 128: fp32/bf16 x NCHW/channels_last
    python bench/overhead_resnet.py --device cuda  # the same on a GPU, then ResNet-50 at 224x224 in bf16 +
                                                   # channels_last, with MFU against the GPU's peak bf16 FLOP/s

Each case is one bench/overhead.py measurement (same model, weights, batches and Adam for
both loops, alternated rounds, median ratio of samples/s; target >= 0.97) on uniformly random
uint8 images. On CUDA, MFU = (training FLOPs per step x steps/s) / peak bf16 FLOP/s, with the
FLOPs of one forward + backward counted by torch.utils.flop_counter. Without a CUDA device,
`--device cuda` stops with one line.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import torch
import torch.nn.functional as F

import overhead
from _common import machine_line, median, print_table

# dense bf16 tensor-core peaks, FLOP/s (vendor data sheets); --peak-tflops overrides
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM
    "GH200": 989.4e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362.1e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None, help="steps per measurement (default: 50 CPU, 100 CUDA)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s, if the GPU is not in the table")
    p.add_argument("--only", default=None, help="run only the cases whose label contains this text")
    return p.parse_args()


def cases(device: str) -> list[tuple[str, int, str, bool]]:
    """(model, image size, precision, channels_last)."""
    small = [("torchvision.resnet18", 32, p, cl) for p in ("fp32", "bf16") for cl in (False, True)]
    return small + ([("torchvision.resnet50", 224, "bf16", True)] if device == "cuda" else [])


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def flops_per_step(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> float:
    """Forward + backward FLOPs of one training step (the optimizer's few are left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model).train()
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch_size, args.channels, args.size, args.size, device=device).contiguous(
        memory_format=layout
    )
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        F.cross_entropy(net(x).float(), y).backward()
    return float(counter.get_total_flops())


def main() -> None:
    options = parse_args()
    if options.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"error: bench/overhead_resnet.py --device cuda needs a CUDA device; this machine has none "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False)"
        )
    steps = options.steps or (100 if options.device == "cuda" else 50)
    rows: list[list[Any]] = []
    for model, size, precision, channels_last in cases(options.device):
        label = f"{model.split('.')[1]} {size}x{size} {precision}{' channels_last' if channels_last else ''}"
        if options.only and options.only not in label:
            continue
        print(f"\n== {label}", flush=True)
        argv = [
            "--model", model, "--data", "random", "--size", str(size), "--channels", "3",
            "--batch-size", str(options.batch_size), "--steps", str(steps), "--rounds", str(options.rounds),
            "--device", options.device, "--precision", precision, "--no-lightning",
        ]  # fmt: skip
        argv += ["--channels-last"] * channels_last + (["--threads", str(options.threads)] if options.threads else [])
        args = overhead.parse_args(argv)
        result = overhead.run(args)
        trainkit, hand = median(result["speeds"]["trainkit"]), median(result["speeds"]["hand-written"])
        mfu: list[Any] = []
        if options.device == "cuda":
            device = result["device"]
            peak = peak_flops(device, options.peak_tflops)
            flops = flops_per_step(result["contenders"][1].module, args, device)
            step_rate = [s / args.batch_size for s in (trainkit, hand)]
            mfu = [flops * r / peak if peak else None for r in step_rate]
            print(f"training FLOPs per step {flops / 1e9:.1f} G; peak bf16 {peak / 1e12 if peak else '?'} TFLOP/s")
        ratio = result["median"]["trainkit"]
        rows.append([label, trainkit, hand, ratio, *mfu, "met" if ratio >= overhead.TARGET else "NOT met"])
    print()
    print(machine_line(torch.device(options.device)))
    headers = ["case", "trainkit samples/s", "hand-written samples/s", "median ratio"]
    headers += ["trainkit MFU", "hand-written MFU"] if options.device == "cuda" else []
    print_table([*headers, f"target >= {overhead.TARGET}"], rows)


if __name__ == "__main__":
    main()
