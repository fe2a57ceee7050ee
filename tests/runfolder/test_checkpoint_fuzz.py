"""Checkpoint loading under a seeded fuzzer: eval, resume and predict of damaged checkpoints.

A real mid-run checkpoint is mutated (fields removed, renamed and retyped at the top and
deep inside; tensors of the wrong shape or dtype, or not tensors; storages declaring huge
sizes; the file truncated, bytes corrupted, zip entries damaged or missing) and each
mutation goes through `eval`, `resume` and `predict` (and some through `export`). Each
must end in exit 0 (a harmless mutation), or 1 or 2 with one `error:` line (one line per
problem for a config), never a traceback, never a hang. TRAINKIT_FUZZ_CASES scales the
number of cases (CASES_PER_2000 per 2,000 there).
"""

from __future__ import annotations

import collections
import copy
import io
import math
import os
import pickle
import random
import re
import signal
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import trainkit
from conftest import load_ckpt, tiny_config
from trainkit.cli import app
from trainkit.errors import TrainingInterrupted
from trainkit.training.session import Session

pytestmark = pytest.mark.slow  # CI runs it; the fast set (-m "not slow") leaves it out

CASES_PER_2000 = 120
CASES = max(12, CASES_PER_2000 * int(os.environ.get("TRAINKIT_FUZZ_CASES", "2000")) // 2000)
SEED = int(os.environ.get("TRAINKIT_FUZZ_SEED", "0"))
COMMAND_SECONDS = 120  # a hang detector, far above any command's time
PROBLEMS = re.compile(r": (\d+) problems in the config:$")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[dict[str, Any], bytes, Path]:
    """A checkpoint one step before the end of a 2-epoch run (Adam, dropout, a cosine schedule)."""
    tmp = tmp_path_factory.mktemp("ckpt_fuzz")
    config = tiny_config(tmp, model={"dropout": 0.2}, scheduler={"name": "cosine"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Session, "stop_requested", lambda self, state: state.step == 11)
        with pytest.raises(TrainingInterrupted):
            trainkit.train(config, quiet=True)
    path = tmp / "ckpt" / "tiny" / "last.pt"
    assert load_ckpt(path)["step"] == 11
    from PIL import Image

    image = tmp / "digit.png"
    Image.new("L", (8, 8), 200).save(image)
    return load_ckpt(path), path.read_bytes(), image


# ---------------------------------------------------------------- mutations

JUNK: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    1.5,
    math.nan,
    "x",
    "",
    [],
    {},
    [1, "a"],
    {"a": 1},
    {1: 2},
    b"bytes",
    torch.tensor([1.0]),
    torch.zeros(3, 3, dtype=torch.int64),
]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path inside nested dicts and lists (tensors are leaves)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, prefix + (key,))
    elif isinstance(value, (list, tuple)) and not isinstance(value, torch.Tensor):
        for i, inner in enumerate(value):
            found += _paths(inner, prefix + (i,))
    return found


def _parent(root: Any, path: tuple) -> Any:
    node = root
    for part in path[:-1]:
        node = node[part]
    return node


def _mutable(root: dict, path: tuple) -> Any:
    """The container holding path[-1], made mutable (tuples become lists) on the way down."""
    node = root
    for part in path[:-1]:
        if isinstance(node[part], tuple):
            node[part] = list(node[part])
        node = node[part]
    return node


def _tensor_paths(raw: dict) -> list[tuple]:
    return [p for p in _paths(raw) if isinstance(_get(raw, p), torch.Tensor)]


def _get(root: Any, path: tuple) -> Any:
    node = root
    for part in path:
        node = node[part]
    return node


def _save(raw: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    return buffer.getvalue()


class _FakeStorage:
    pass


class _FakeTensor:
    """Pickles as a tensor whose storage declares `numel` elements and shape `size`."""

    def __init__(self, size: tuple[int, ...]):
        self.size = size

    def __reduce__(self):
        stride = tuple(int(math.prod(self.size[i + 1 :])) for i in range(len(self.size)))
        return (
            torch._utils._rebuild_tensor_v2,
            (_FakeStorage(), 0, self.size, stride, False, collections.OrderedDict()),
        )


def _huge(raw: dict, rng: random.Random, original: bytes) -> bytes:
    """A zip like torch.save's whose pickle declares a storage far larger than its record."""
    numel = rng.choice([2**31, 2**40, 2**62])
    size = rng.choice([(numel,), (4,), (2**20, 2**20)])

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, _FakeStorage) else None

    mutated = copy.deepcopy(raw)
    key = rng.choice(sorted(mutated["model"]))
    mutated["model"][key] = _FakeTensor(size)
    for path in _tensor_paths(mutated):  # every other tensor: a plain value (one storage, "0")
        _mutable(mutated, path)[path[-1]] = 0.0
    stream = io.BytesIO()
    Pickler(stream, protocol=2).dump(mutated)
    return _rewrite_zip(original, {"data.pkl": stream.getvalue(), "data/0": b"\0" * 16}, drop_data=True)


def _rewrite_zip(original: bytes, replace: dict[str, bytes | None], drop_data: bool = False) -> bytes:
    """The checkpoint's zip with entries (by name suffix) replaced, or dropped for None."""
    source = zipfile.ZipFile(io.BytesIO(original))
    prefix = next(n for n in source.namelist() if n.endswith("data.pkl"))[: -len("data.pkl")]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name in source.namelist():
            short = name[len(prefix) :]
            if drop_data and short.startswith("data/") and short not in replace:
                continue
            if short in replace:
                if replace[short] is not None:
                    target.writestr(name, replace.pop(short) or b"")
                else:
                    replace.pop(short)
                continue
            target.writestr(name, source.read(name))
        for short, data in replace.items():
            if data is not None:
                target.writestr(prefix + short, data)
    return out.getvalue()


def mutate(raw: dict, original: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation: (its kind, the file's bytes)."""
    kind = rng.choice(
        [
            "field removed",
            "field renamed",
            "field retyped",
            "nested value removed",
            "nested value retyped",
            "tensor reshaped",
            "tensor retyped",
            "tensor replaced",
            "huge declared size",
            "file truncated",
            "bytes corrupted",
            "zip entry damaged",
            "zip entry removed",
        ]
    )
    mutated = copy.deepcopy(raw)
    if kind == "field removed":
        del mutated[rng.choice(sorted(mutated))]
    elif kind == "field renamed":
        key = rng.choice(sorted(mutated))
        mutated[key + rng.choice(["_", "s", "X"])] = mutated.pop(key)
    elif kind == "field retyped":
        mutated[rng.choice(sorted(mutated))] = copy.deepcopy(rng.choice(JUNK))
    elif kind.startswith("nested"):
        top = rng.choice(["config", "state", "optimizer", "scheduler", "rng", "data_info", "rank_losses", "model"])
        inner = [(top,) + p for p in _paths(mutated[top])] or [(top,)]
        path = rng.choice(inner)
        holder = _mutable(mutated, path) if len(path) > 1 else mutated
        if kind == "nested value removed" and isinstance(holder, dict):
            del holder[path[-1]]
        elif kind == "nested value removed" and isinstance(holder, list):
            holder.pop(path[-1])
        else:
            holder[path[-1]] = copy.deepcopy(rng.choice(JUNK))
    elif kind.startswith("tensor"):
        path = rng.choice(_tensor_paths(mutated))
        holder, tensor = _mutable(mutated, path), _get(mutated, path)
        if kind == "tensor reshaped":
            shapes = [(tensor.numel() + 1,), (2, 3, 5), (), tuple(reversed(tensor.shape)) + (1,), (0,)]
            holder[path[-1]] = torch.zeros(rng.choice(shapes), dtype=tensor.dtype)
        elif kind == "tensor retyped":
            dtype = rng.choice([torch.int64, torch.bool, torch.float16, torch.complex64, torch.uint8, torch.float64])
            holder[path[-1]] = tensor.to(dtype) if tensor.numel() else torch.zeros(3, dtype=dtype)
        else:
            holder[path[-1]] = copy.deepcopy(rng.choice([j for j in JUNK if not isinstance(j, torch.Tensor)]))
    elif kind == "huge declared size":
        return kind, _huge(raw, rng, original)
    elif kind == "file truncated":
        return kind, original[: rng.randrange(len(original))]
    elif kind == "bytes corrupted":
        data = bytearray(original)
        for _ in range(rng.choice([1, 4, 64])):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return kind, bytes(data)
    else:
        names = [n.split("/", 1)[1] for n in zipfile.ZipFile(io.BytesIO(original)).namelist()]
        name = rng.choice(names)
        if kind == "zip entry removed":
            return kind, _rewrite_zip(original, {name: None})
        entry = zipfile.ZipFile(io.BytesIO(original)).read(
            next(n for n in zipfile.ZipFile(io.BytesIO(original)).namelist() if n.endswith(name))
        )
        damaged = rng.choice([entry[: len(entry) // 2], entry[::-1], b"\xff" * len(entry), entry + b"tail", b""])
        return kind, _rewrite_zip(original, {name: damaged})
    return kind, _save(mutated)


# ---------------------------------------------------------------- running


def _check(result: Any) -> str | None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"exception {type(result.exception).__name__}: {str(result.exception)[:300]}"
    err = result.stderr
    if "Traceback" in err or "Traceback" in result.stdout:
        return "traceback in the output"
    if result.exit_code == 0:
        return None
    if result.exit_code not in (1, 2):
        return f"exit {result.exit_code}: {err[:300]!r}"
    errors = [i for i, line in enumerate(err.splitlines()) if line.startswith("error: ")]
    if len(errors) != 1:
        return f"{len(errors)} error lines: {err[:500]!r}"
    lines = err.splitlines()[errors[0] :]
    many = PROBLEMS.search(lines[0])
    expected = 1 + int(many.group(1)) if many else 1
    if len(lines) != expected:
        return f"{len(lines)} lines for {expected}: {err[:500]!r}"
    return None


def test_damaged_checkpoints_end_in_one_line_never_a_traceback_or_a_hang(base, tmp_path):
    raw, original, image = base
    rng = random.Random(SEED)
    command = app  # typer.testing rebuilds the click command per call (about 6 ms)
    runner = CliRunner()
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []

    def too_slow(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a command ran longer than {COMMAND_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    try:
        for case in range(CASES):
            kind, data = mutate(raw, original, rng)
            folder = tmp_path / f"case{case}"
            folder.mkdir()
            path = folder / "last.pt"
            path.write_bytes(data)
            runs = {
                "eval": ["eval", "--ckpt", str(path)],
                "resume": ["resume", str(path), "trainer.epochs=2", "-q"],
                "predict": ["predict", "--ckpt", str(path), str(image)],
            }
            if case % 20 == 0:
                runs["export"] = ["export", "--ckpt", str(path), "-o", str(folder / "model.pt2")]
            for name, args in runs.items():
                signal.alarm(COMMAND_SECONDS)
                try:
                    result = runner.invoke(command, args)
                finally:
                    signal.alarm(0)
                problem = _check(result)
                outcomes[f"{kind}: exit {result.exit_code}"] += 1
                if problem:
                    failures.append(f"case {case} ({kind}) {name}: {problem}")
                path.write_bytes(data)  # resume may have written over it; each command sees the mutation
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert failures == [], "\n".join(failures[:30])
    # the mutations reach the failures they are meant to, not only harmless ones
    assert sum(n for key, n in outcomes.items() if not key.endswith("exit 0")) > len(outcomes)
    print(dict(sorted(outcomes.items())))
