"""Name -> builder registries for models, data sets, optimizers and schedulers.

A builder is any callable (function or class). Its parameters split in two:
- runtime inputs, which the loop supplies when it builds the component (the data set's
  input shape for a model, the model's parameters for an optimizer), and
- options, which the user writes in the YAML next to `name:`.

The options are validated against the builder's signature (names, types, constraints
given with `typing.Annotated`) before anything is built, so a config mistake is reported
with every other one instead of as a TypeError deep inside training.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from trainkit.errors import RegistryError


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """'; did you mean 'x'?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., Any]
    origin: str  # "module.qualname (file:line)", shown when a name is registered twice
    # What the loop must know about the component, declared where it is registered, e.g.
    # a scheduler's `spans_run=True`: planned over the whole run, so a run cannot be extended.
    traits: Mapping[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.builder)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.builder) or ""
        return doc.splitlines()[0] if doc else ""


class Family(Protocol):
    """Names under a prefix (`torchvision.resnet18`) that a model zoo resolves on demand.

    A family knows its names without building anything, and makes an Entry for one name
    only when it is used, so `trainkit validate` and `ls` stay fast (builtin/zoo.py).
    """

    prefix: str  # "torchvision": its names are spelled "torchvision.<name>"

    def missing(self) -> str | None:
        """Why the family cannot be used here (its package is not installed), else None."""

    def names(self) -> list[str]:
        """Every name of the family, without the prefix."""

    def entry(self, name: str) -> Entry | None:
        """The Entry of one name (without the prefix), or None when the family has no such name."""

    def suggestions(self, name: str) -> list[str]:
        """Names (without the prefix) close to an unknown one, best first."""


def _origin(obj: Any) -> str:
    where = f"{obj.__module__}.{getattr(obj, '__qualname__', obj)}"
    try:
        file = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
        return f"{where} ({file}:{line})"
    except (OSError, TypeError):
        return where


class Registry:
    """A named collection of builders, filled by the `register` decorator."""

    def __init__(self, kind: str, runtime_inputs: typing.Iterable[str], builtins: str):
        self.kind = kind
        self.runtime_inputs = frozenset(runtime_inputs)
        self._builtins = builtins  # module whose import registers the built-in entries
        self._entries: dict[str, Entry] = {}
        self._families: dict[str, Family] = {}
        self._loaded = False

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtins)
            from trainkit import plugins  # installed plugins register into the same registries

            plugins.load_entry_points()

    def register(self, name: str | None = None, **traits: Any) -> Callable[[Callable], Callable]:
        """Decorator: `@MODELS.register("cnn")` (the name defaults to the function's).

        Keyword traits tell the loop what it needs to know, e.g. `@SCHEDULERS.register("cosine",
        spans_run=True)` for a schedule planned over the whole run (such a run is extended with a
        new schedule for the added epochs), `@DATASETS.register("mnist", task="classification")`
        so the metrics a run will record are known before the data set is built, or
        `requires={"pyarrow": "tables"}` for a builder that needs an optional package (a config
        naming it without the package is an error that names the extra to install).
        """

        def decorator(builder: Callable) -> Callable:
            key = name or builder.__name__
            if key in self._entries:
                first = self._entries[key].origin
                raise RegistryError(
                    f"{self.kind} '{key}' is already registered by {first}; "
                    f"cannot register {_origin(builder)} under the same name"
                )
            self._entries[key] = Entry(key, builder, _origin(builder), dict(traits))
            return builder

        return decorator

    def add_family(self, family: Family) -> None:
        """Resolve every name `<family.prefix>.<name>` through `family` (a model zoo)."""
        if family.prefix in self._families:
            raise RegistryError(f"{self.kind} family '{family.prefix}' is already added")
        self._families[family.prefix] = family

    def families(self) -> dict[str, Family]:
        self._load_builtins()
        return dict(self._families)

    def _family_entry(self, name: str) -> Entry | None:
        prefix, dot, rest = name.partition(".")
        family = self._families.get(prefix) if dot else None
        if family is None or family.missing():
            return None
        return family.entry(rest)

    def get(self, name: str) -> Entry:
        self._load_builtins()
        if name in self._entries:
            return self._entries[name]
        entry = self._family_entry(name) if isinstance(name, str) else None
        if entry is None:
            raise RegistryError(self.unknown_message(name))
        return entry

    def unknown_message(self, name: Any) -> str:
        self._load_builtins()
        prefix, dot, rest = str(name).partition(".")
        family = self._families.get(prefix) if dot else None
        if family is not None:
            missing = family.missing()
            if missing:
                return f"{self.kind} '{name}' {missing}"
            close = family.suggestions(rest)
            hint = f"; did you mean '{prefix}.{close[0]}'?" if close else ""
            count = len(family.names())
            return f"unknown {self.kind} '{name}'{hint} (`trainkit ls {self.kind}s {prefix}` lists its {count} names)"
        known = ", ".join(self.names()) or "none"
        return f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())} (known: {known})"

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries or (isinstance(name, str) and self._family_entry(name) is not None)

    def build(self, name: str, options: dict[str, Any], **runtime: Any) -> Any:
        """Call the builder with the user's options and the runtime inputs it asks for."""
        entry = self.get(name)
        params = entry.signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        # a runtime input the user may also set (trait `settable`, e.g. a zoo's num_classes) is theirs
        wanted = {k: v for k, v in runtime.items() if (takes_any or k in params) and k not in options}
        return entry.builder(**options, **wanted)

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The builder's user-settable parameters (runtime inputs left out, unless the entry
        declares them `settable`: a zoo model's num_classes defaults to the data set's)."""
        entry = self.get(name)
        settable = set(entry.traits.get("settable", ()))
        return {
            p.name: p
            for p in entry.signature.parameters.values()
            if (p.name not in self.runtime_inputs or p.name in settable)
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)
        }

    def accepts_any_option(self, name: str) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in self.get(name).signature.parameters.values())

    def type_hints(self, name: str) -> dict[str, Any]:
        builder = self.get(name).builder
        target = builder.__init__ if inspect.isclass(builder) else builder
        if not inspect.isfunction(target) and not inspect.ismethod(target):
            return dict(getattr(target, "__annotations__", {}))  # a callable object, e.g. a zoo's builder
        try:
            return typing.get_type_hints(target, include_extras=True)
        except Exception:  # unresolvable annotations in user code: fall back to Any
            return {}


# The built-in components live in trainkit.builtin and register exactly as a plugin would.
# new_run: True when a new run starts (load pretrained weights), False when the model is
# rebuilt to receive a checkpoint's weights (resume, eval, predict, export)
MODELS = Registry("model", ["input_shape", "num_classes", "num_outputs", "new_run"], "trainkit.builtin")
# num_workers: data.num_workers resolved (this machine's cores when unset), for builders that decode
DATASETS = Registry("dataset", ["seed", "record", "num_workers"], "trainkit.builtin")
OPTIMIZERS = Registry("optimizer", ["params"], "trainkit.builtin")
SCHEDULERS = Registry("scheduler", ["optimizer", "total_steps", "steps_per_epoch", "epochs"], "trainkit.builtin")

# config section -> registry; the section's `name:` picks the entry
REGISTRIES: dict[str, Registry] = {
    "model": MODELS,
    "data": DATASETS,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
}
