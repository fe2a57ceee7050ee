"""A seeded fuzzer of the config reader: random YAML documents and overrides through `validate`.

Run by test_config_fuzz.py in a child process with a memory limit (`python fuzz_configs.py
--seed S --cases N --folder DIR`); it prints one JSON object: the counts per kind of case
and per outcome, and every case that broke a rule:
- the command ends with exit 0 (the resolved config on stdout, "<file>: ok" on stderr,
  and that output validates again to the same config) or exit 2 (nothing on stdout; on
  stderr one `error: ` line, or a header and exactly one `  - ` line per problem);
- never a traceback, never another exit code (1 would be "out of host memory");
- never more than CASE_SECONDS per case (a watchdog alarm);
- never runs code: `!!python/...` payloads would create a marker file.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

CASE_SECONDS = 20  # far above any case's time: only a hang gets near it
MEMORY_LIMIT = 2 << 30  # bytes of address space for the whole fuzzing process

BASE: dict[str, Any] = {
    "name": "fuzz",
    "seed": 0,
    "model": {"name": "cnn", "channels": [8, 16], "hidden": 32, "dropout": 0.25},
    "data": {"name": "mnist", "root": "data", "download": False, "batch_size": 64, "augment": {"crop_padding": 2}},
    "optimizer": {"name": "adam", "lr": 0.002, "betas": [0.9, 0.999]},
    "scheduler": {"name": "onecycle", "pct_start": 0.25},
    "trainer": {"epochs": 3, "device": "cpu", "grad_clip": 1.0, "early_stopping": {"patience": 2}},
    "checkpoint": {"dir": "checkpoints", "every_n_steps": 0, "keep_last": 2},
    "logging": {"tensorboard": False},
}
KNOWN_PATHS = [
    ("name",),
    ("seed",),
    ("imports",),
    ("model", "name"),
    ("model", "channels"),
    ("model", "hidden"),
    ("model", "dropout"),
    ("data", "name"),
    ("data", "batch_size"),
    ("data", "eval_batch_size"),
    ("data", "root"),
    ("data", "download"),
    ("data", "augment", "crop_padding"),
    ("data", "augment", "hflip"),
    ("optimizer", "name"),
    ("optimizer", "lr"),
    ("optimizer", "betas"),
    ("optimizer", "momentum"),
    ("scheduler", "name"),
    ("scheduler", "pct_start"),
    ("trainer", "epochs"),
    ("trainer", "device"),
    ("trainer", "log_every"),
    ("trainer", "grad_clip"),
    ("trainer", "precision"),
    ("trainer", "label_smoothing"),
    ("trainer", "limit_batches"),
    ("trainer", "early_stopping", "metric"),
    ("trainer", "early_stopping", "min_delta"),
    ("checkpoint", "dir"),
    ("checkpoint", "keep_last"),
    ("logging", "tensorboard"),
]
COMPONENT_NAMES = ["cnn", "mlp", "fast_cnn", "cnnn", "mnist", "synthetic_images", "sgd", "adamw", "cosine", "step"]
ODD_VALUES = ["true", ".inf", "-1", "0", "1e400", "[1,2", "{a: 1", "&a [*a]", "*x", "!!python/name:os.system", ""]
UNICODE = [
    "ünïcödé",
    "日本語",
    "😀" * 3,
    "\u202eevil",
    "a\u0301",
    "ǅ",
    "\ufeff",
    "tab\there",
    "line\nbreak",
    "nul\0byte",
]


class Fuzzer:
    def __init__(self, seed: int, marker: Path):
        self.rng = random.Random(seed)
        self.marker = marker

    # -- values
    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                lambda: r.choice([0, 1, -1, 2, 7, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, 2**80, -(2**80)]),
                lambda: r.randint(-(10**30), 10**30),
                lambda: r.choice(
                    [0.0, -0.0, 0.5, 1e-8, 1e308, 1e-320, -1.5, float("nan"), float("inf"), -float("inf")]
                ),
                lambda: r.choice([True, False, None]),
                lambda: r.choice(["", " ", "auto", "cuda:99", "cpu", "fp16", "val_loss", "../../etc", "a.b", "~x"]),
                lambda: r.choice(["1e3", "0x10", "0o7", ".inf", "yes", "no", "~", "null", "2024-13-45", "1_000"]),
                lambda: r.choice(UNICODE),
                lambda: r.choice(COMPONENT_NAMES),
                lambda: "x" * r.choice([100, 5000]),
            ]
        )()

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        roll = r.random()
        if depth > 3 or roll < 0.55:
            return self.scalar()
        if roll < 0.75:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        if roll < 0.93:
            return {self.key(): self.value(depth + 1) for _ in range(r.randint(0, 4))}
        nested: Any = 1
        for _ in range(r.choice([10, 63, 70, 200])):
            nested = [nested] if r.random() < 0.5 else {"k": nested}
        return nested

    def key(self) -> Any:
        r = self.rng
        return r.choice(
            [
                lambda: r.choice(["name", "epochs", "lr", "batch_size", "trainer", "model", "imports", "seed"]),
                lambda: r.choice(["epoch", "batchsize", "momentun", "+lr", "~lr", "a.b", "", " ", "<<"]),
                lambda: r.choice(UNICODE),
                lambda: r.choice([1, 2.5, True, None]),
                lambda: "k" * r.choice([1, 300, 5000]),
            ]
        )()

    # -- documents
    def structure(self) -> dict[str, Any]:
        """The base config with a few keys set, removed, added or replaced."""
        config = copy.deepcopy(BASE)
        for _ in range(self.rng.randint(1, 4)):
            path = list(self.rng.choice(KNOWN_PATHS))
            if self.rng.random() < 0.2:
                path[-1] = self.key()  # an unknown or odd key
            if self.rng.random() < 0.1:
                path = path[:1]  # a whole section
            node: Any = config
            for part in path[:-1]:
                if not isinstance(node, dict):
                    break
                node = node.setdefault(part, {}) if isinstance(node.get(part), dict) or part not in node else node[part]
            if not isinstance(node, dict):
                continue
            action = self.rng.random()
            if action < 0.15:
                node.pop(path[-1], None)
            elif path[-1] == "imports" or (path[-1] == "name" and self.rng.random() < 0.3):
                node[path[-1]] = self.rng.choice(
                    [["fuzz_missing_module"], ["fuzz.missing.sub", 3], "fuzz_missing", [None], COMPONENT_NAMES[:2]]
                )
            else:
                node[path[-1]] = self.value()
        return config

    def text(self, config: Any) -> str:
        try:
            return yaml.safe_dump(config, sort_keys=False, allow_unicode=self.rng.random() < 0.5, width=10**9)
        except (yaml.YAMLError, RecursionError, ValueError):
            return yaml.safe_dump(BASE, sort_keys=False)

    def mangle(self, text: str) -> str:
        """YAML-level damage: syntax, tags, anchors and aliases, bombs, encodings."""
        r = self.rng
        bomb = ['lol0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
            f"lol{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, r.randint(2, 10))
        ]
        marker = str(self.marker)
        choices = [
            lambda t: t + "\n".join(bomb) + "\n",
            lambda t: t + "loop: &l [1, *l]\n",
            lambda t: t + "merge: &m {a: 1}\nmore: {<<: *m, <<: *m}\n",
            lambda t: t + "undefined: *nowhere\n",
            lambda t: t + f"evil: !!python/object/apply:os.system ['touch {marker}']\n",
            lambda t: t + f"evil: !!python/object/new:os.system ['touch {marker}']\n",
            lambda t: t + "odd: !custom_tag 3\nset: !!set {a, b}\nbin: !!binary aGVsbG8=\nomap: !!omap [a: 1]\n",
            lambda t: t + "? [complex, key]\n: value\n",
            lambda t: t + "name: again\n",  # a repeated key
            lambda t: t + "trainer:\n\tepochs: 1\n",  # a tab
            lambda t: t.replace("\n", "\r\n"),
            lambda t: "\ufeff" + t,
            lambda t: t[: r.randint(0, len(t))],
            lambda t: t.replace(":", "", 1),
            lambda t: t.replace("[", "", 1),
            lambda t: t + "x: [" * r.choice([5, 100, 3000]),
            lambda t: t + "\x00",
            lambda t: t + "%YAML 1.2\n---\n",
            lambda t: t + "---\nsecond: document\n",
            lambda t: "- a list\n- at the top\n",
            lambda t: "just a string",
            lambda t: "",
            lambda t: "# only a comment\n",
            lambda t: t + f"seed: {'9' * r.choice([20, 5000])}\n",
            lambda t: t + "when: 2024-02-30\n",
            lambda t: t + "big: [" + "0," * r.choice([1000, 150_000]) + "0]\n",  # past MAX_VALUES
            lambda t: t + "long: " + "x" * r.choice([10_000, 500_000]) + "\n",
            lambda t: _insert(t, r, r.choice(["{", "}", "]", "&", "*", "!", "|", ">", "'", '"', "%", "@", "`", "\t"])),
        ]
        # the big ones take the parser about half a second each (pure-Python PyYAML): a few do
        weights = [1.0] * len(choices)
        weights[-3] = weights[-2] = 0.15  # big, long
        for _ in range(r.randint(1, 2)):
            text = r.choices(choices, weights)[0](text)
        return text

    def override(self) -> str:
        r = self.rng
        key = ".".join(str(p) for p in r.choice(KNOWN_PATHS))
        value = self.text(self.value()).strip().replace("\n", " ") if r.random() < 0.5 else str(self.scalar())
        return r.choice(
            [
                lambda: f"{key}={value}",
                lambda: f"{key}={r.choice(ODD_VALUES)}",
                lambda: f"~{key}",
                lambda: f"+{key}={value}",
                lambda: f"{key}.deeper=1",
                lambda: r.choice(["=", "~", "==", "a..b=1", ".a=1", "a.=1", "noequals", "~nope", "a b=1", "trainer=5"]),
                lambda: "a." * r.choice([10, 100, 1000]) + "z=1",
                lambda: f"{r.choice(UNICODE)}={value}",
                lambda: f"imports=[fuzz_missing_{r.randint(0, 9)}]",
                lambda: f"seed={r.choice([2**32, 2**80, -1, 1.5, True])}",
            ]
        )()

    def case(self) -> tuple[str, bytes, list[str]]:
        """(kind, file bytes, overrides)."""
        r = self.rng
        kind = r.choices(["structure", "yaml", "overrides", "bytes"], weights=[45, 30, 20, 5])[0]
        config = self.structure() if kind in ("structure", "yaml") else copy.deepcopy(BASE)
        text = self.text(config)
        if kind == "yaml":
            text = self.mangle(text)
        data = text.encode("utf-8", "surrogatepass")
        if kind == "bytes":
            data = bytearray(data)
            for _ in range(r.randint(1, 8)):
                data[r.randrange(len(data))] = r.randrange(256)
            data = bytes(data)
        overrides = [self.override() for _ in range(r.randint(1, 3) if kind == "overrides" else r.choice([0, 0, 1]))]
        return kind, data, overrides


def _insert(text: str, r: random.Random, what: str) -> str:
    at = r.randint(0, len(text))
    return text[:at] + what + text[at:]


PROBLEM_COUNT = re.compile(r": (\d+) problems in the config:$")


def check(result: Any, path: Path, runner: Any, command: Any) -> str | None:
    """None if the outcome keeps the rules, else what is wrong."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"exception {type(result.exception).__name__}: {result.exception}"
    err, out = result.stderr, result.stdout
    if "Traceback" in err or "Traceback" in out:
        return "traceback in the output"
    if result.exit_code == 0:
        if err != f"{path}: ok\n":
            return f"exit 0 but stderr {err[:300]!r}"
        again = path.with_name(path.stem + "_again.yaml")
        again.write_text(out)
        second = runner.invoke(command, ["validate", str(again)])
        if second.exit_code != 0 or second.stdout != out:
            return f"the resolved config does not validate to itself: {second.stderr[:300]!r}"
        return None
    if result.exit_code != 2:
        return f"exit {result.exit_code}: {err[:300]!r}"
    if out:
        return f"exit 2 with stdout {out[:200]!r}"
    lines = err.splitlines()
    if not lines or not lines[0].startswith("error: ") or not err.endswith("\n"):
        return f"not an error line: {err[:300]!r}"
    many = PROBLEM_COUNT.search(lines[0])
    if many:
        if len(lines) != 1 + int(many.group(1)) or not all(line.startswith("  - ") for line in lines[1:]):
            return f"problem lines do not match the count: {err[:500]!r}"
    elif len(lines) != 1:
        return f"{len(lines)} lines for one problem: {err[:500]!r}"
    return None


def run(seed: int, cases: int, folder: Path) -> dict[str, Any]:
    from typer.testing import CliRunner

    from trainkit.cli import app

    command = app  # typer.testing rebuilds the click command per call (about 6 ms)

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "pwned"
    fuzzer = Fuzzer(seed, marker)
    runner = CliRunner()

    def too_slow(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a case ran longer than {CASE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    try:
        return _cases(fuzzer, cases, folder, runner, command, marker)
    finally:
        signal.signal(signal.SIGALRM, previous)


def _cases(fuzzer: Fuzzer, cases: int, folder: Path, runner: Any, command: Any, marker: Path) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    slowest = 0.0
    for index in range(cases):
        kind, data, overrides = fuzzer.case()
        path = folder / f"case{index}.yaml"
        path.write_bytes(data)
        started = time.perf_counter()
        result: Any = None
        signal.alarm(CASE_SECONDS)
        try:
            result = runner.invoke(command, ["validate", str(path), *overrides])
            problem = check(result, path, runner, command)
        except TimeoutError as exc:
            problem = str(exc)
        finally:
            signal.alarm(0)
        slowest = max(slowest, time.perf_counter() - started)
        counts[f"kind {kind}"] += 1
        counts[f"exit {result.exit_code}" if problem is None and result is not None else "broken"] += 1
        if problem is None and result.exit_code == 2:
            counts[f"{kind}: config error"] += 1
        if marker.exists():
            problem = "a python tag ran code"
            marker.unlink()
        if problem is not None:
            failures.append(
                {"case": index, "kind": kind, "overrides": overrides, "problem": problem, "file": str(path)}
            )
        else:
            path.unlink()
            path.with_name(path.stem + "_again.yaml").unlink(missing_ok=True)
    return {"counts": dict(counts), "failures": failures[:20], "failed": len(failures), "slowest_s": slowest}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args()
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass  # no limit where the platform has none; the test still checks the rest
    os.chdir(args.folder.parent)  # nothing a case names is found in the working folder by accident
    print(json.dumps(run(args.seed, args.cases, args.folder)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
