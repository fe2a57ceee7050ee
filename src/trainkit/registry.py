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
from typing import Any

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

    def get(self, name: str) -> Entry:
        self._load_builtins()
        if name not in self._entries:
            raise RegistryError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: Any) -> str:
        self._load_builtins()
        known = ", ".join(self.names()) or "none"
        return f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())} (known: {known})"

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def build(self, name: str, options: dict[str, Any], **runtime: Any) -> Any:
        """Call the builder with the user's options and the runtime inputs it asks for."""
        entry = self.get(name)
        params = entry.signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        wanted = {k: v for k, v in runtime.items() if takes_any or k in params}
        return entry.builder(**options, **wanted)

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The builder's user-settable parameters (runtime inputs left out)."""
        return {
            p.name: p
            for p in self.get(name).signature.parameters.values()
            if p.name not in self.runtime_inputs and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)
        }

    def accepts_any_option(self, name: str) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in self.get(name).signature.parameters.values())

    def type_hints(self, name: str) -> dict[str, Any]:
        builder = self.get(name).builder
        target = builder.__init__ if inspect.isclass(builder) else builder
        try:
            return typing.get_type_hints(target, include_extras=True)
        except Exception:  # unresolvable annotations in user code: fall back to Any
            return {}


# The built-in components live in trainkit.builtin and register exactly as a plugin would.
MODELS = Registry("model", ["input_shape", "num_classes", "num_outputs"], "trainkit.builtin")
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
