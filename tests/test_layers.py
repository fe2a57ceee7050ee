"""The layering the README and CONTRIBUTING.md describe, enforced on the source itself.

- config/ never imports torch (validate, ls and schema answer without it);
- training/ never imports the CLI, typer or rich (the loop is a library);
- nothing but cli.py imports tools/ (the library never depends on its commands);
- runfolder's layout, fileio and runlog never import torch (runs and plot stay instant).

Each module's imports are read from its syntax tree, including imports inside functions,
so a lazy `import torch` in a builder counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "trainkit"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (trainkit uses absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; trainkit spells imports out in full"
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = _modules()


def _violations(owners: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        if name == owners or name.startswith(owners + "."):
            for imported in _imports(path):
                if any(imported == f or imported.startswith(f + ".") for f in forbidden):
                    bad.append(f"{name} imports {imported}")
    return bad


def test_the_modules_are_found():
    assert {"trainkit.cli", "trainkit.config", "trainkit.training.loop", "trainkit.tools.runs"} <= set(MODULES)


def test_config_never_imports_torch():
    assert _violations("trainkit.config", ("torch", "torchvision", "numpy")) == []


def test_trackers_never_import_torch_or_the_cli():
    assert _violations("trainkit.tracking", ("torch", "trainkit.cli", "typer", "rich", "trainkit.tools")) == []


def test_training_never_imports_the_cli_or_its_libraries():
    assert _violations("trainkit.training", ("trainkit.cli", "typer", "rich", "trainkit.tools")) == []


@pytest.mark.parametrize(
    "layer",
    [
        "trainkit.config",
        "trainkit.builtin",
        "trainkit.training",
        "trainkit.runfolder",
        "trainkit.tracking",
        "trainkit.api",
        "trainkit.registry",
        "trainkit.plugins",
        "trainkit.errors",
        "trainkit.sweeps",
    ],
)
def test_only_the_cli_imports_tools(layer):
    assert _violations(layer, ("trainkit.tools", "trainkit.cli")) == []


@pytest.mark.parametrize(
    "module",
    [
        "trainkit.runfolder.layout",
        "trainkit.runfolder.fileio",
        "trainkit.runfolder.runlog",
        "trainkit.runfolder.lock",
        "trainkit.tools.runs",
        "trainkit.tools.plot",
    ],
)
def test_run_folder_readers_stay_free_of_torch_at_import(module):
    # runlog imports TensorBoard's writer (which needs torch) only when asked for, inside a method
    tree = ast.parse(MODULES[module].read_text())
    top_level = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not {m for m in top_level if m.split(".")[0] in ("torch", "numpy")}
    assert not {m for m in top_level if m.startswith("trainkit.") and m.split(".")[1] in ("training", "api")}


@pytest.mark.parametrize(
    "module",
    [
        "trainkit.sweeps.layout",
        "trainkit.sweeps.spec",
        "trainkit.sweeps.study",
        "trainkit.sweeps.driver",
        "trainkit.sweeps.report",
    ],
)
def test_the_sweep_process_stays_free_of_torch_at_import(module):
    # only the trial processes (sweeps.worker) train; the sweep process holds the study
    tree = ast.parse(MODULES[module].read_text())
    top_level = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not {m for m in top_level if m.split(".")[0] in ("torch", "numpy", "optuna")}
    assert not {m for m in top_level if m.startswith("trainkit.") and m.split(".")[1] in ("training", "api")}


def test_a_violation_is_caught(tmp_path):
    """The checker itself: a file importing torch is reported (so the tests above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch.nn\n    from rich.table import Table\n")
    assert {"torch.nn", "rich.table", "rich.table.Table"} <= _imports(bad)
