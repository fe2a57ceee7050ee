"""Helpers shared by the benchmark scripts: where things are, how to call trainkit, tables.

Nothing here imports torch: startup.py measures the CLI's start-up and must not pay for it.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO.parent / "shared" / "data"  # where the real MNIST / Fashion-MNIST files live


@functools.cache  # once per benchmark run: every trainkit command it builds asks for it
def compile_sources() -> None:
    """Byte-compile trainkit's source, as pip does for every package it installs.

    The hand-written contenders import only installed libraries, whose .pyc files pip wrote.
    trainkit from this checkout (`pip install -e .`, or PYTHONPATH=src) has none until an
    import writes them, and with PYTHONDONTWRITEBYTECODE set (as on the machines these numbers
    come from) none ever is: every run would compile ~80 modules again, about a second, which
    no user of an installed trainkit pays."""
    import compileall

    compileall.compile_dir(str(REPO / "src" / "trainkit"), quiet=1)


def trainkit_command(runner: str = "auto") -> tuple[list[str], str]:
    """The argv prefix that runs the `trainkit` CLI of this interpreter, and a label for it;
    trainkit's source is byte-compiled first (see compile_sources).

    'script' is the console script pip put next to sys.executable (what a user types);
    'module' is `python -m trainkit` (works without the script, e.g. with PYTHONPATH=src).
    """
    compile_sources()
    script = Path(sys.executable).parent / ("trainkit.exe" if os.name == "nt" else "trainkit")
    if runner == "script" or (runner == "auto" and script.exists()):
        if not script.exists():
            sys.exit(f"error: no console script at {script}; run `pip install -e .` or use --runner module")
        return [str(script)], f"console script {script}"
    return [sys.executable, "-m", "trainkit"], f"{Path(sys.executable).name} -m trainkit"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: object = None) -> str:
    """The chip that does the work, torch's version and threads (imports torch: call it late)."""
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chip = torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else cpu_name()
    return (
        f"machine: {chip} ({device}), {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
