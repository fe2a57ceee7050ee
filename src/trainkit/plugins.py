"""User components from outside trainkit, and who may have them imported.

Ways in, all ending in `@MODELS.register(...)` (or DATASETS, ...) being run:
- a config's `imports: [my_project.models]`, or `--import MODULE` on the command line:
  modules the user names, imported before the config is checked;
- installed packages that declare the entry-point group `trainkit.plugins`, naming a
  module (imported) or a function (imported and called).

Importing a module runs its code. A checkpoint records the modules its components came
from, so `eval`, `resume`, `predict` and `export` can import them again, but a checkpoint
may come from anyone: the modules it names are imported only with the user's leave, as
with `trust_remote_code` in the Hugging Face libraries (`require`). The working folder
goes on sys.path (at the end, so it never shadows an installed module) only to import
modules the user named.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from trainkit.errors import PluginError, UntrustedPluginError, one_line

ENTRY_POINT_GROUP = "trainkit.plugins"
TRUST_FLAG = "--trust-checkpoint-plugins"
log = logging.getLogger("trainkit")
_entry_points_loaded = False
_entry_point_modules: set[str] = set()  # modules that installed plugins declare


def load_entry_points() -> None:
    """Import every installed plugin once. A broken plugin is reported, not fatal."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    _entry_point_modules.clear()
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _entry_point_modules.add(ep.value.split(":")[0].strip())
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


def _imported(name: str) -> bool:
    return sys.modules.get(name) is not None


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"


def import_modules(names: Any) -> list[tuple[tuple, str]]:
    """Import modules the user named (a config's `imports`); returns (key path, message)
    for each failure. One already imported is not looked for again (nothing would run)."""
    if not isinstance(names, list):
        return []  # absent, or a wrong type that the structural check reports
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or _imported(name):
            continue
        _cwd_on_path()
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:  # a module's own error, whatever it is, is one line
            problems.append(((i,), f"cannot import module '{one_line(name)}': {_failure(exc)}"))
    return problems


def import_user_modules(names: Iterable[str], flag: str = "--import") -> None:
    """Import the modules named on the command line (`--import MODULE`) or by the API's
    `imports=`; a failure is a PluginError naming the module."""
    problems = import_modules(list(names))
    if problems:
        raise PluginError("; ".join(f"{flag}: {message}" for _, message in problems))


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


def _within(name: str, roots: Iterable[str]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def allowed(name: str, imports: Iterable[str] = ()) -> bool:
    """May a module that a checkpoint names be imported? Yes when importing it runs no new
    code (it is imported already: by trainkit, an installed plugin or the user), or it
    belongs to an installed plugin or to a module the user named (`imports`)."""
    load_entry_points()
    return _imported(name) or _within(name, _entry_point_modules) or _within(name, imports)


def require(modules: Iterable[Any], what: str, *, imports: Iterable[str] = (), trust: bool = False) -> None:
    """Import the plugin modules a checkpoint names, if the user allows it.

    Allowed are installed plugins (entry points), modules the user named (`imports`, i.e.
    `--import`) and, with `trust` (`--trust-checkpoint-plugins`), any module; anything else
    is an UntrustedPluginError naming the modules and those three ways. A missing module
    is a PluginError naming it."""
    imports = list(imports)
    names = list(dict.fromkeys(str(m) for m in modules))
    refused = [name for name in names if not trust and not allowed(name, imports)]
    if refused:
        quoted = ", ".join(f"'{one_line(n)}'" for n in refused)
        named = " ".join(f"--import {one_line(n)}" for n in refused)
        raise UntrustedPluginError(
            f"{what} names plugin module{'s' if len(refused) > 1 else ''} {quoted}, and importing a module "
            f"runs its code: trainkit imports it only if you install it as a '{ENTRY_POINT_GROUP}' entry point, "
            f"name it ({named}; Python: imports=[...]) or trust the checkpoint ({TRUST_FLAG}; "
            "Python: trust_plugins=True)"
        )
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            missing.append(f"'{one_line(name)}' ({_failure(exc)})")
    if missing:
        raise PluginError(
            f"{what} needs plugin module {', '.join(missing)}; install the package that "
            "provides it, put it on PYTHONPATH, or name it with --import MODULE (which also looks "
            "in the working folder)"
        )
