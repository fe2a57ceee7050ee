"""User components from outside trainkit.

Two ways in, both ending in `@MODELS.register(...)` (or DATASETS, ...) being run:
- a config's `imports: [my_project.models]`: modules imported before the config is checked;
- installed packages that declare the entry-point group `trainkit.plugins`, naming a
  module (imported) or a function (imported and called).

A checkpoint records the modules its components came from, so `eval` and `resume`
can import them again, or say clearly which one is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from trainkit.errors import PluginError

ENTRY_POINT_GROUP = "trainkit.plugins"
log = logging.getLogger("trainkit")
_entry_points_loaded = False


def load_entry_points() -> None:
    """Import every installed plugin once. A broken plugin is reported, not fatal."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()  # `pkg:register`: a function that registers the components
        except Exception as exc:  # one bad package must not take trainkit down
            log.warning("plugin entry point '%s' (%s) failed to load: %s", ep.name, ep.value, exc)


def _cwd_on_path() -> None:
    # `trainkit` started as a console script does not put the working folder on sys.path
    # the way `python -m` does; users expect `imports: [my_models]` next to their config.
    # At the end, so a file in the working folder never shadows an installed module.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def import_modules(names: Any) -> list[tuple[tuple, str]]:
    """Import the config's `imports`; returns (key path, message) for each failure."""
    if not isinstance(names, list):
        return []  # absent, or a wrong type that the structural check reports
    _cwd_on_path()
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:
            problems.append(((i,), f"cannot import module '{name}': {type(exc).__name__}: {exc}"))
    return problems


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def modules_of(builders: Iterable[Any]) -> list[str]:
    """The non-trainkit modules that defined these builders (recorded in checkpoints)."""
    found = []
    for builder in builders:
        module = getattr(builder, "__module__", "") or ""
        if module and module.split(".")[0] != "trainkit" and module not in found:
            found.append(module)
    return found


def require(modules: Iterable[str], what: str) -> None:
    """Import the plugin modules a checkpoint needs, naming any that is missing."""
    _cwd_on_path()
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            missing.append(f"'{name}' ({type(exc).__name__}: {exc})")
    if missing:
        raise PluginError(
            f"{what} needs plugin module {', '.join(missing)}; install the package that "
            "provides it or put it on PYTHONPATH"
        )
