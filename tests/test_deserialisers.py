"""The wall, on the source: every way trainkit's code could run code it reads is reviewed.

Read from each module's syntax tree: loaders that can run code (pickle and friends, yaml's
unsafe loaders, torch.jit/torch.export loads, np.load with allow_pickle), `torch.load`
without `weights_only=True`, eval/exec/compile/__import__, and imports by name
(importlib). Each one found must be on ALLOWED below, with the reason it is safe; an entry
that no longer matches anything fails too, so the list stays short and true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "trainkit"

# (file under src/trainkit, what is called) -> why it is safe
ALLOWED = {
    ("builtin/readers.py", "pickle.Unpickler"): "CIFAR-10 batches: find_class admits numpy's array reconstruction only",
    ("builtin/readers.py", "_CifarUnpickler(...).load"): "that restricted unpickler",
    ("tools/export.py", "torch.export.load"): "reads back the file export just wrote, to check it",
    ("tools/export.py", "torch.jit.load"): "reads back the file export just wrote, to check it",
    ("plugins.py", "importlib.import_module"): "modules the user named, installed plugins, or trusted ones only",
    ("plugins.py", "ep.load"): "entry points of packages the user installed as trainkit plugins",
    ("registry.py", "importlib.import_module"): "trainkit.builtin, a constant",
    (
        "builtin/zoo.py",
        "importlib.import_module",
    ): "a model family's own module (zoo_torchvision, zoo_timm), a class constant",
    ("__init__.py", "importlib.import_module"): "trainkit's own modules, from a constant table (lazy exports)",
}

ALWAYS = {
    *(f"pickle.{n}" for n in ("load", "loads", "Unpickler")),
    *(f"_pickle.{n}" for n in ("load", "loads", "Unpickler")),
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    *(f"yaml.{n}" for n in ("load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all")),
    *(f"yaml.{n}" for n in ("Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader")),
    "torch.jit.load",
    "torch.export.load",
    "torch.package.PackageImporter",
    "torch.hub.load",
    "torch.hub.load_state_dict_from_url",
    "torch.utils.model_zoo.load_url",
    "importlib.import_module",
    "importlib.__import__",
    "importlib.util.spec_from_file_location",
    "importlib.util.module_from_spec",
    "importlib.machinery.SourceFileLoader",
    "runpy.run_path",
    "runpy.run_module",
    "builtins.eval",
    "builtins.exec",
    "builtins.compile",
    "builtins.__import__",
}
SAFE_LOADERS = {"json", "tomllib", "tomli"}  # modules whose .load() reads plain data only


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the module or object it stands for (`np` -> `numpy`)."""
    names = {n: f"builtins.{n}" for n in ("eval", "exec", "compile", "__import__")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """`np.load` -> 'numpy.load'; a call in the chain is written `f(...)`; None if unnamed."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value, aliases)
        return f"{inner}.{node.attr}" if inner else None
    if isinstance(node, ast.Call):
        inner = _dotted(node.func, aliases)
        return f"{inner}(...)" if inner else None
    return None


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def findings(path: Path) -> list[tuple[str, int]]:
    """(what, line) for every use in the file that needs a reviewer's word."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases) or ""
            if name == "torch.load" and not _is_constant(_keyword(node, "weights_only"), True):
                found.append(("torch.load without weights_only=True", node.lineno))
            elif name in ("numpy.load", "np.load") and not _is_constant(
                _keyword(node, "allow_pickle") or ast.Constant(False), False
            ):
                found.append(("numpy.load with allow_pickle", node.lineno))
            elif isinstance(node.func, ast.Attribute) and node.func.attr in (
                "load",
                "loads",
                "exec_module",
                "load_module",
            ):
                owner = _dotted(node.func.value, aliases) or "?"
                if owner.split(".")[0] not in SAFE_LOADERS | {"torch", "numpy"} and name not in ALWAYS:
                    found.append((f"{owner}.{node.func.attr}", node.lineno))
        if isinstance(node, (ast.Name, ast.Attribute)) and not isinstance(getattr(node, "ctx", None), ast.Store):
            name = _dotted(node, aliases)
            if name in ALWAYS:
                found.append((name, node.lineno))
    return sorted(set(found), key=lambda f: (f[1], f[0]))


def _all_findings() -> dict[tuple[str, str], list[int]]:
    seen: dict[tuple[str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for what, line in findings(path):
            seen.setdefault((path.relative_to(PACKAGE).as_posix(), what), []).append(line)
    return seen


def test_every_deserialiser_and_dynamic_import_is_reviewed():
    seen = _all_findings()
    unreviewed = [
        f"src/trainkit/{file}:{lines[0]}: {what}" for (file, what), lines in seen.items() if (file, what) not in ALLOWED
    ]
    assert unreviewed == [], "add a reason to ALLOWED only after a review:\n" + "\n".join(unreviewed)


def test_the_allow_list_has_no_stale_entries():
    seen = _all_findings()
    assert [key for key in ALLOWED if key not in seen] == []


@pytest.mark.parametrize(
    "source,expected",
    [
        ("import torch\ntorch.load(p)\n", "torch.load without weights_only=True"),
        ("import torch\ntorch.load(p, weights_only=False)\n", "torch.load without weights_only=True"),
        ("import numpy as np\nnp.load(p, allow_pickle=True)\n", "numpy.load with allow_pickle"),
        ("from pickle import loads\nloads(b)\n", "pickle.loads"),
        ("import yaml\nyaml.load(t, Loader=yaml.Loader)\n", "yaml.load"),
        ("import torch.jit\ntorch.jit.load(p)\n", "torch.jit.load"),
        ("x = eval('1')\n", "builtins.eval"),
        ("exec('pass')\n", "builtins.exec"),
        ("import importlib as il\nil.import_module(n)\n", "importlib.import_module"),
        ("make().load()\n", "make(...).load"),
        (
            "import importlib.util\nimportlib.util.spec_from_file_location('m', p)\n",
            "importlib.util.spec_from_file_location",
        ),
    ],
)
def test_the_scanner_catches_each_kind(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert expected in [what for what, _ in findings(path)]


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n",
        "import numpy as np\nnp.load(p)\n",
        "import json\njson.load(f)\n",
        "model.eval()\n",
        "import yaml\nyaml.safe_load(t)\n",
    ],
)
def test_the_scanner_lets_safe_calls_be(tmp_path, source):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert findings(path) == []
