"""Image folders: `trainkit train` on a folder of MNIST PNGs against a hand-written torchvision
ImageFolder + DataLoader script doing the same job, whole process start to exit.

    python bench/image_folder.py                                  # 20,000 + 5,000 PNGs, 3 rounds, CPU
    python bench/image_folder.py --train 2000 --test 500 --rounds 1 --scan-files 6000   # a quick check
    python bench/image_folder.py --device cuda --format jpg --gpu-decode                 # CUDA, GPU decoding

The folders are written once from the MNIST files in --root (PNG, or JPEG with --format jpg)
under --work. Each round runs every contender as a fresh process, in rotated order:

- hand-written, workers 0 and 2: ImageFolder with a greyscale PIL loader, ToTensor, Normalize,
  DataLoader(shuffle, batch 64, pin_memory on CUDA), the classic CNN, Adam 1e-3, one epoch,
  then the test set (batch 1000) and torch.save of the weights. The best of the two counts.
- trainkit cold: `trainkit train` with an empty cache folder (decodes every file once).
- trainkit warm: the same with the cache folder of an untimed earlier run (decodes nothing).
- trainkit mnist: the built-in in-memory MNIST set, as many batches: what the warm run should cost.
- gpu-decode (--gpu-decode, CUDA, JPEG): workers only read the files' bytes; each batch is
  decoded on the GPU by torchvision.io.decode_jpeg(list, device="cuda").

Read: median wall seconds, the ratio to the best hand-written run, peak memory (the larger of
the process's own high-water mark from the kernel and, polled every 0.2 s, its RSS plus its
workers' private pages) and test accuracy (the same job: they must agree to about a point).
trainkit's command keeps freed host memory for reuse (trainer.host_memory, faster CPU steps, a
higher peak); the memory target is checked on the run that leaves malloc alone, as the
hand-written script does. Then the scan: time from process start to the first training step on
a folder of --scan-files files whose index and pixels are cached, and the floor under it: a
hand-written script's import of torch and one Adam step of the same CNN.
Targets (issue 11): cold <= 0.7x, warm <= 0.6x the best hand-written run; trainkit's peak
memory <= hand-written's + the cache file; first step <= 3 s on 60,000 files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_ROOT, REPO, machine_line, median, print_table, trainkit_command

HAND_WRITTEN = r"""
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
from PIL import Image
from torchvision import datasets, transforms
root, workers, device, batch = sys.argv[1], int(sys.argv[2]), torch.device(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
def grey(path):
    with open(path, "rb") as f:
        return Image.open(f).convert("L")
train = datasets.ImageFolder(f"{root}/train", transform=tf, loader=grey)
test = datasets.ImageFolder(f"{root}/test", transform=tf, loader=grey)
pin = device.type == "cuda"
train_loader = torch.utils.data.DataLoader(train, batch, shuffle=True, num_workers=workers, pin_memory=pin)
test_loader = torch.utils.data.DataLoader(test, 1000, num_workers=workers, pin_memory=pin)
class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 128), nn.Linear(128, 10)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))
model = CNN().to(device)
opt = torch.optim.Adam(model.parameters(), 1e-3)
model.train()
for step, (x, y) in enumerate(train_loader):
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % 50 == 0:
        loss.item()
model.eval()
correct = total = 0
with torch.inference_mode():
    for x, y in test_loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
torch.save(model.state_dict(), sys.argv[5])
print(f"accuracy {correct / total:.4f}")
"""

GPU_DECODE = r"""
import sys, torch, torch.nn as nn, torch.nn.functional as F
from torchvision import datasets, io
root, workers, device, batch = sys.argv[1], int(sys.argv[2]), torch.device(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
train = datasets.ImageFolder(f"{root}/train", loader=io.read_file)  # workers read bytes only
test = datasets.ImageFolder(f"{root}/test", loader=io.read_file)
def as_list(samples):
    return [s[0] for s in samples], torch.tensor([s[1] for s in samples])
train_loader = torch.utils.data.DataLoader(train, batch, shuffle=True, num_workers=workers, collate_fn=as_list)
test_loader = torch.utils.data.DataLoader(test, 1000, num_workers=workers, collate_fn=as_list)
def images(data):  # one batched nvJPEG call
    decoded = io.decode_jpeg(data, mode=io.ImageReadMode.GRAY, device=device)
    return (torch.stack(decoded).float() / 255 - 0.1307) / 0.3081
class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 128), nn.Linear(128, 10)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))
model = CNN().to(device)
opt = torch.optim.Adam(model.parameters(), 1e-3)
for step, (data, y) in enumerate(train_loader):
    loss = F.cross_entropy(model(images(data)), y.to(device, non_blocking=True))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if step % 50 == 0:
        loss.item()
model.eval()
correct = total = 0
with torch.inference_mode():
    for data, y in test_loader:
        correct += (model(images(data)).argmax(1).cpu() == y).sum().item()
        total += len(y)
torch.save(model.state_dict(), sys.argv[5])
print(f"accuracy {correct / total:.4f}")
"""


FIRST_STEP = r"""
import sys, torch, torch.nn as nn, torch.nn.functional as F
class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 128), nn.Linear(128, 10)
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))
model = CNN()
opt = torch.optim.Adam(model.parameters(), 1e-3)
loss = F.cross_entropy(model(torch.randn(64, 1, 28, 28)), torch.randint(0, 10, (64,)))
loss.backward()
opt.step()
open(sys.argv[1], "w").write(f"{loss.item()}\n")
"""  # the floor of the scan test: import torch, the CNN and one Adam step (which imports torch._dynamo)


MNIST_EVAL_BATCH = 128  # the in-memory MNIST contender tests on about as many images as the folder run
PSS_POLL_S = 0.2  # how often the memory of the process tree is read


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="folder holding MNIST/raw")
    p.add_argument(
        "--work", default=str(Path(tempfile.gettempdir()) / "trainkit-bench-images"), help="image folders and caches"
    )
    p.add_argument("--train", type=int, default=20000, help="training images (the first N of MNIST's training set)")
    p.add_argument("--test", type=int, default=5000, help="test images (the first N of MNIST's test set)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--format", choices=["png", "jpg"], default="png")
    p.add_argument("--gpu-decode", action="store_true", help="add the GPU-decoding contender (CUDA, --format jpg)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every run (1 on a busy 2-core VM)")
    p.add_argument("--scan-files", type=int, default=60000, help="files of the scan test (0: skip it)")
    p.add_argument("--scan-runs", type=int, default=3)
    p.add_argument(
        "--write",
        metavar="DIR",
        help="only write --dataset's first --train/--test images as class folders in DIR, then stop "
        "(the folder of configs/finetune_resnet18.yaml)",
    )
    p.add_argument("--dataset", choices=["mnist", "fashion_mnist"], default="mnist", help="what --write writes")
    return p.parse_args()


def write_folder(args: argparse.Namespace, n_train: int, n_test: int) -> Path:
    """MNIST's first n_train / n_test digits as files in <work>/<name>/{train,test}/<digit>/ (once)."""
    folder = Path(args.work) / f"mnist_{args.format}_{n_train}_{n_test}"
    if not (folder / "complete").exists():
        write_images(folder, "mnist", args.root, args.format, n_train, n_test)
    return folder


def write_images(
    folder: Path, dataset: str, root: str, suffix: str, n_train: int, n_test: int, marker: bool = True
) -> None:
    """The data set's first n_train / n_test images in folder/{train,test}/<class name>/, then
    (with `marker`) a file `complete`: the benchmark writes a folder again that lacks it."""
    sys.path.insert(0, str(REPO / "src"))
    from PIL import Image

    from trainkit.builtin.datasets import fashion_mnist, mnist

    if marker:  # the benchmark's own folder under --work, cut short earlier: written again
        shutil.rmtree(folder, ignore_errors=True)
    data = (mnist if dataset == "mnist" else fashion_mnist)(root=root, download=False)
    names = [name.replace("/", "-") for name in data.info.class_names]  # "T-shirt/top" is no folder name
    print(f"writing {n_train + n_test} {suffix.upper()} files of {dataset} to {folder} ...", flush=True)
    for split, part, n in (("train", data.train, n_train), ("test", data.test, n_test)):
        labels = part.targets[:n].tolist()
        for label in set(labels):
            (folder / split / names[label]).mkdir(parents=True, exist_ok=True)
        for i, label in enumerate(labels):
            Image.fromarray(part.inputs[i, 0].numpy()).save(folder / split / names[label] / f"{i:05d}.{suffix}")
    if marker:
        (folder / "complete").write_text("")


def _rollup(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0]) * 1024
    return values


def tree_memory(pid: int) -> int:
    """Bytes held by a process and its workers: the process's RSS (torch's libraries included,
    as for every contender) plus each descendant's private pages (what forking a worker adds).
    Not PSS: on a shared machine it splits the libraries with whatever else runs."""
    total, todo, root = 0, [pid], True
    while todo:
        current = todo.pop()
        try:
            values = _rollup(current)
            total += values["Rss"] if root else values["Private_Clean"] + values["Private_Dirty"]
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, KeyError):
            pass
        root = False
    return total


def timed(command: list[str], env: dict[str, str], watch: Path | None = None) -> dict:
    """Wall time, peak memory and output of one process; with `watch`, when that file first has a line."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, cwd=REPO)
    peak, first, polled = 0, None, 0.0
    while True:
        # wait4 rather than poll(): its rusage has the process's own high-water mark (ru_maxrss),
        # exact where polling misses a short peak (the test set's first batch of 1000)
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            break
        now = time.perf_counter()
        if now - polled >= PSS_POLL_S:  # reading smaps costs CPU: not at every tick
            peak, polled = max(peak, tree_memory(process.pid)), now
        if watch is not None and first is None and watch.exists() and watch.read_text().strip():
            first = now - start
        time.sleep(0.01)
    wall = time.perf_counter() - start
    peak = max(peak, usage.ru_maxrss * 1024)  # KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime  # the process's own; its loader workers' are not in it
    if watch is not None and first is None and watch.exists() and watch.read_text().strip():
        first = wall  # written just before the process ended, between two looks
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        sys.exit(f"error: {' '.join(command[:4])} ... exited {process.returncode}:\n{output[-2000:]}")
    return {"wall": wall, "peak": peak, "output": output, "first_step": first, "cpu": cpu}


def trainkit_run(args, config: Path, out: Path, *overrides: str) -> list[str]:
    command, _ = trainkit_command("module")
    return [
        *command, "train", str(config), f"checkpoint.dir={out / 'ckpt'}", f"trainer.device={args.device}",
        "--quiet", "--overwrite", *overrides,
    ]  # fmt: skip


def folder_run(args, folder: Path, cache: Path, out: Path, *overrides: str) -> list[str]:
    return trainkit_run(args, out / "config.yaml", out, f"data.root={folder}", f"data.cache_dir={cache}", *overrides)


def write_config(args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "name": "bench",
        "model": {"name": "cnn"},
        "data": {"name": "image_folder", "root": "set-on-the-command-line", "batch_size": args.batch_size},
        "optimizer": {"name": "adam", "lr": 0.001},
        "trainer": {"epochs": 1, "log_every": 50},
    }
    (out / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    mnist = {**config, "data": {"name": "mnist", "root": args.root, "download": False, "batch_size": args.batch_size}}
    (out / "mnist.yaml").write_text(json.dumps(mnist))


def accuracy(result: dict, out: Path) -> float | None:
    for line in result["output"].splitlines():
        if line.startswith("accuracy "):
            return float(line.split()[1])
    metrics = out / "ckpt" / "bench" / "metrics.jsonl"
    if metrics.exists():
        epochs = [json.loads(line) for line in metrics.read_text().splitlines() if '"epoch"' in line]
        return epochs[-1].get("val_accuracy") if epochs else None
    return None


def main() -> None:
    args = parse_args()
    if args.write:
        if Path(args.write).exists() and any(Path(args.write).iterdir()):
            sys.exit(f"error: {args.write} exists and is not empty; --write writes a new folder and deletes nothing")
        write_images(Path(args.write), args.dataset, args.root, args.format, args.train, args.test, marker=False)
        return
    if args.device.startswith("cuda") or args.gpu_decode:
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: --device cuda and --gpu-decode need a CUDA device; torch.cuda.is_available() is False")
        if args.gpu_decode and args.format != "jpg":
            sys.exit("error: --gpu-decode decodes JPEG on the GPU: add --format jpg")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.work)
    folder = write_folder(args, args.train, args.test)
    out = work / "runs"
    write_config(args, out)
    scripts = {"hand-written": HAND_WRITTEN, "gpu-decode": GPU_DECODE}
    for name, text in scripts.items():
        (out / f"{name}.py").write_text(text)
    warm_cache = work / f"warm-cache-{folder.name}"  # one per folder: its size is the allowance
    contenders = {
        "hand-written, 0 workers": lambda: [sys.executable, str(out / "hand-written.py"), str(folder), "0"],
        "hand-written, 2 workers": lambda: [sys.executable, str(out / "hand-written.py"), str(folder), "2"],
        "trainkit cold": lambda: folder_run(args, folder, Path(tempfile.mkdtemp(dir=work)), out),
        "trainkit warm": lambda: folder_run(args, folder, warm_cache, out),
        "trainkit warm, host_memory=default": lambda: folder_run(
            args, folder, warm_cache, out, "trainer.host_memory=default"
        ),
        "trainkit mnist (in memory)": lambda: trainkit_run(
            args,
            out / "mnist.yaml",
            out,
            f"trainer.limit_batches={-(-args.train // args.batch_size)}",
            f"data.eval_batch_size={MNIST_EVAL_BATCH}",  # the folder run's on the CPU (its default there)
            f"trainer.limit_eval_batches={-(-args.test // MNIST_EVAL_BATCH)}",
        ),
    }
    if args.gpu_decode:
        contenders["gpu-decode, 2 workers"] = lambda: [sys.executable, str(out / "gpu-decode.py"), str(folder), "2"]
    print(machine_line(), flush=True)
    print(f"untimed warm-up: trainkit fills {warm_cache} ...", flush=True)
    timed(contenders["trainkit warm"](), env)
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            command = contenders[name]()
            if name.startswith(("hand-written", "gpu-decode")):
                command += [args.device, str(args.batch_size), str(out / "weights.pt")]
            result = timed(command, env)
            result["accuracy"] = accuracy(result, out)
            results[name].append(result)
            print(f"round {r + 1}: {name}: {result['wall']:.2f} s, peak {result['peak'] / 2**20:.0f} MiB", flush=True)
        for cold in work.glob("tmp*"):
            shutil.rmtree(cold, ignore_errors=True)
    report(args, results, warm_cache)
    if args.scan_files:
        scan(args, env, out)


def report(args: argparse.Namespace, results: dict[str, list[dict]], warm_cache: Path) -> None:
    """Ratios are taken within each round (contenders that ran minutes apart, on a shared
    machine whose speed drifts by a third over a run of this script), then their median."""
    walls = {name: median([r["wall"] for r in runs]) for name, runs in results.items()}
    hands = [n for n in results if n.startswith("hand-written")]
    best = [min(results[n][r]["wall"] for n in hands) for r in range(args.rounds)]  # each round's best

    def ratio(name: str) -> float:
        return median([run["wall"] / b for run, b in zip(results[name], best, strict=True)])

    hand_peak = min(median([r["peak"] for r in results[n]]) for n in hands)
    cache_bytes = sum(p.stat().st_size for p in warm_cache.rglob("pixels.npy"))
    rows = []
    for name, runs in results.items():
        acc = [r["accuracy"] for r in runs if r["accuracy"] is not None]
        cpu, peak = median([r["cpu"] for r in runs]), median([r["peak"] for r in runs]) / 2**20
        rounds = " ".join(f"{r['wall']:.1f}" for r in runs)
        rows.append([name, walls[name], ratio(name), cpu, peak, median(acc) if acc else None, rounds])
    print(
        f"\n{args.train} training + {args.test} test {args.format.upper()} files, {args.rounds} rounds, {args.device}"
    )
    headers = ["contender", "median s", "/ round's best hand", "CPU s", "peak MiB", "accuracy", "rounds s"]
    print_table(headers, rows)
    print("(CPU s: the main process's user + system time, which a busy neighbour on the host does not stretch)")
    cold, warm = ratio("trainkit cold"), ratio("trainkit warm")
    peaks = {name: median([r["peak"] for r in runs]) for name, runs in results.items()}
    limit = hand_peak + cache_bytes
    same_malloc = peaks["trainkit warm, host_memory=default"]
    print(f"cold / best hand-written: {cold:.3f} (target <= 0.7): {'met' if cold <= 0.7 else 'NOT met'}")
    print(f"warm / best hand-written: {warm:.3f} (target <= 0.6): {'met' if warm <= 0.6 else 'NOT met'}")
    print(
        f"peak memory: trainkit {same_malloc / 2**20:.0f} MiB with malloc left alone "
        f"({peaks['trainkit warm'] / 2**20:.0f} MiB keeping freed memory), hand-written {hand_peak / 2**20:.0f} MiB "
        f"+ cache {cache_bytes / 2**20:.0f} MiB: {'met' if same_malloc <= limit else 'NOT met'}"
    )
    if "gpu-decode, 2 workers" in walls:
        winner = "gpu-decode" if walls["gpu-decode, 2 workers"] < walls["trainkit warm"] else "trainkit (cached)"
        print(f"GPU decoding vs trainkit's cache: {winner} wins")


def scan(args: argparse.Namespace, env: dict[str, str], out: Path) -> None:
    """Process start to first training step on a big folder whose index and pixels are cached."""
    n_test = min(10000, args.scan_files // 6)
    folder = write_folder(args, args.scan_files - n_test, n_test)
    cache = Path(args.work) / "scan-cache"
    extra = ["trainer.limit_batches=1", "trainer.limit_eval_batches=1", "trainer.log_every=1"]
    print(f"\nscan: untimed warm-up on {folder} (fills the caches) ...", flush=True)
    timed(folder_run(args, folder, cache, out, *extra), env)
    firsts, walls = [], []
    for _ in range(args.scan_runs):
        metrics = out / "ckpt" / "bench" / "metrics.jsonl"
        metrics.unlink(missing_ok=True)
        result = timed(folder_run(args, folder, cache, out, *extra), env, watch=metrics)
        firsts.append(result["first_step"] or float("nan"))
        walls.append(result["wall"])
    floor_script, floor_out = out / "first-step.py", out / "first-step.txt"
    floor_script.write_text(FIRST_STEP)
    floors = []
    for _ in range(args.scan_runs):
        floor_out.unlink(missing_ok=True)
        floors.append(timed([sys.executable, str(floor_script), str(floor_out)], env, watch=floor_out)["first_step"])
    sys.path.insert(0, str(REPO / "src"))
    from trainkit.builtin.image_cache import cache_folder, probe_files
    from trainkit.builtin.image_index import scan_folder

    start = time.perf_counter()
    listing = scan_folder(folder)
    probe_files(folder, listing.table, cache_folder(str(cache)), 0)
    listed = time.perf_counter() - start
    first, floor = median(firsts), median([f or float("nan") for f in floors])
    print(
        f"scan of {args.scan_files} files (index cached): listing {listed:.2f} s in-process; "
        f"process start to first step {first:.2f} s (runs {' '.join(f'{v:.2f}' for v in firsts)}), "
        f"whole 1-batch run {median(walls):.2f} s; target first step <= 3 s: {'met' if first <= 3 else 'NOT met'}\n"
        f"floor: a hand-written script's import torch, CNN and one Adam step (torch.optim imports torch._dynamo "
        f"at its first use) {floor:.2f} s; trainkit's own part of its first step: {first - floor:.2f} s"
    )


if __name__ == "__main__":
    main()
