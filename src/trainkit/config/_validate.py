"""Experiment config: YAML -> overrides -> one typed, validated object.

Validation happens in two passes over the same raw dict and reports every problem at
once: pydantic checks the fixed structure (trainer, checkpoint, ...), then each
component section (model, data, optimizer, scheduler) is checked against the signature
of the builder its `name:` picks. Nothing here imports torch, so `trainkit validate`
answers quickly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from trainkit import plugins
from trainkit.config._finetune import cross_problems, param_group_problems
from trainkit.config._metrics import complete_early_stopping, early_stopping_problems
from trainkit.config._overrides import apply_overrides
from trainkit.config._sections import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
)
from trainkit.config._strict import hint_from_default, strict_hint
from trainkit.config._yaml import KeyPath, read_yaml_file
from trainkit.errors import ConfigError
from trainkit.registry import REGISTRIES, Registry, did_you_mean

# Keys of a component section that belong to trainkit, not to the builder.
_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
}
# in declaration order: messages list them ("data keys: batch_size, eval_batch_size, ...")
_OWN_KEYS = {section: tuple(model.model_fields) for section, model in _SECTION_MODELS.items()}


@dataclass(frozen=True)
class Problem:
    path: KeyPath
    message: str
    unknown_key: bool = False  # a key the schema does not have (what Hydra's `+key=` would add)


# Hydra's `+key=value` adds a key to a config; trainkit's keys are fixed by its schema.
_PLUS_NOTE = "('+' adds a key in Hydra; trainkit's keys are fixed by its schema, so '+key=value' sets a key it has)"


class _Context:
    """Where each key came from (file line or command-line override), for messages."""

    def __init__(self, lines: dict[KeyPath, int], overrides: dict[KeyPath, str], labels: dict[str, str]):
        self.lines, self.overrides, self.labels = lines, overrides, labels

    def format(self, problem: Problem) -> str:
        dotted = ".".join(str(p) for p in problem.path) or "(top level)"
        for depth in range(len(problem.path), 0, -1):
            prefix = problem.path[:depth]
            if prefix in self.overrides:
                text = self.overrides[prefix]
                origin = self.labels.get(text, f"override '{text}'")
                note = f" {_PLUS_NOTE}" if problem.unknown_key and text.startswith("+") else ""
                return f"{origin}: {dotted}: {problem.message}{note}"
            if prefix in self.lines:
                return f"line {self.lines[prefix]}: {dotted}: {problem.message}"
        return f"{dotted}: {problem.message}"

    def sort_key(self, problem: Problem) -> tuple[int, str]:
        for depth in range(len(problem.path), 0, -1):
            if problem.path[:depth] in self.lines:
                return self.lines[problem.path[:depth]], ""
        return 1 << 30, ".".join(map(str, problem.path))


# ---------------------------------------------------------------- validation


def _pydantic_problems(error: ValidationError, prefix: KeyPath = ()) -> list[Problem]:
    problems = []
    for err in error.errors():
        path = prefix + tuple(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
            parent = _fields_at(path[:-1])
            if parent is not None:
                message += did_you_mean(path[-1], parent)
            problems.append(Problem(path, message, unknown_key=True))
            continue
        elif kind == "missing":
            message = "required key is missing"
        else:
            text = err["msg"]
            for opening in ("Input should", "Value error, should"):
                if text.startswith(opening):
                    text = "should" + text[len(opening) :]
            message = f"{text}, got {err['input']!r}" if "input" in err else text
        problems.append(Problem(path, message))
    return problems


def _fields_at(path: KeyPath) -> list[str] | None:
    """The known key names of the section at `path` (for 'did you mean')."""
    model: type[BaseModel] = ExperimentConfig
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        candidates: list[Any] = [a for a in getattr(field.annotation, "__args__", ()) if isinstance(a, type)]
        candidates.append(field.annotation)
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return None
        model = nested
    return list(model.model_fields)


_OPTION_MODELS: dict[tuple[str, str, Any], type[BaseModel]] = {}


def options_model(registry: Registry, name: str) -> type[BaseModel]:
    """A pydantic model of the builder's options, from its signature and type hints (made
    once per builder: building it reads type hints and compiles validators)."""
    key = (registry.kind, name, registry.get(name).builder)
    if key not in _OPTION_MODELS:
        _OPTION_MODELS[key] = _options_model(registry, name)
    return _OPTION_MODELS[key]


def _options_model(registry: Registry, name: str) -> type[BaseModel]:
    hints = registry.type_hints(name)
    fields: dict[str, Any] = {}
    for pname, param in registry.options(name).items():
        default = ... if param.default is param.empty else param.default
        hint = strict_hint(hints[pname]) if pname in hints else hint_from_default(param.default)
        fields[pname] = (hint, default)
    config = ConfigDict(extra="allow" if registry.accepts_any_option(name) else "forbid", arbitrary_types_allowed=True)
    try:
        return create_model(f"{registry.kind}_{name}_options", __config__=config, **fields)
    except Exception:  # exotic annotations in user code: check the names only
        loose: dict[str, Any] = {k: (Any, d) for k, (_, d) in fields.items()}
        return create_model(f"{registry.kind}_{name}_options", __config__=config, **loose)


def _check_component(section: str, raw: Any, registry: Registry) -> tuple[list[Problem], dict[str, Any] | None]:
    """Problems with one component section, and its options with defaults filled in."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return [], None  # the structural pass already reports these
    name = raw["name"]
    if name not in registry:
        return [Problem((section, "name"), registry.unknown_message(name))], None
    given = {k: v for k, v in raw.items() if k not in _OWN_KEYS[section]}
    known = registry.options(name)
    # A builder registered with requires={module: extra} needs an optional package
    problems = [
        Problem(
            (section, "name"), f"{registry.kind} '{name}' needs the {module} package: pip install 'trainkit[{extra}]'"
        )
        for module, extra in registry.get(name).traits.get("requires", {}).items()
        if not plugins.has_module(module)
    ]
    for key in given:
        if key in registry.runtime_inputs and key not in known:
            problems.append(
                Problem((section, key), f"is supplied by trainkit when the {registry.kind} is built; remove it")
            )
    given = {k: v for k, v in given.items() if k not in registry.runtime_inputs or k in known}
    try:
        validated = options_model(registry, name).model_validate(given)
    except ValidationError as exc:
        for problem in _pydantic_problems(exc, (section,)):
            if problem.unknown_key:
                # to the user the builder's options (data.root, optimizer.lr) and the section's
                # own keys (data.batch_size, optimizer.param_groups) are one list: suggest and
                # show both, the builder's first (those are the ones that differ per name)
                keys = list(known) + [k for k in _OWN_KEYS[section] if k != "name"]
                listing = ", ".join(keys) or "none"
                what = f"{section} keys" if len(keys) > len(known) else "options"
                problem = Problem(
                    problem.path,
                    f"{registry.kind} '{name}' has no option '{problem.path[-1]}'"
                    f"{did_you_mean(problem.path[-1], keys)} ({what}: {listing})",
                    unknown_key=True,
                )
            problems.append(problem)
        return problems, None
    try:
        resolved = validated.model_dump(mode="json")
    except Exception:  # a default that JSON cannot hold: keep what the user wrote
        resolved = dict(given)
    return problems, resolved


def resolve(
    raw: Any,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    source: str | None = None,
    lines: dict[KeyPath, int] | None = None,
    default_name: str | None = None,
    labels: dict[str, str] | None = None,
) -> ExperimentConfig:
    """Raw YAML data + overrides -> validated config, or one ConfigError naming every problem.

    `labels` names overrides that came from elsewhere than an override the user typed, e.g.
    {"trainer.device=gpu": "device='gpu'"} for the API's `device=` argument."""
    if raw is None:
        raise ConfigError("the config is empty; it needs at least model, data and optimizer sections", source)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"the top level must be a mapping of keys (name, model, data, ...), got {type(raw).__name__}", source
        )
    raw = copy.deepcopy(raw)
    context = _Context(lines or {}, apply_overrides(raw, overrides), labels or {})
    if default_name and "name" not in raw:
        raw["name"] = default_name

    problems = [Problem(("imports",) + p, m) for p, m in plugins.import_modules(raw.get("imports"))]
    config = None
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems += _pydantic_problems(exc)
    options: dict[str, dict[str, Any] | None] = {}
    for section, registry in REGISTRIES.items():
        found, options[section] = _check_component(section, raw.get(section), registry)
        problems += found
    problems += [Problem(path, message) for path, message in early_stopping_problems(raw)]
    found_tuning = param_group_problems(raw.get("optimizer"), options["optimizer"])
    found_tuning += cross_problems(config) if config is not None else []
    problems += [Problem(path, message) for path, message in found_tuning]
    if config is not None and config.logging.tensorboard and not plugins.has_module("tensorboard"):
        problems.append(
            Problem(("logging", "tensorboard"), "needs the tensorboard package: pip install 'trainkit[tensorboard]'")
        )
    if config is not None and config.logging.mlflow is not None and not plugins.has_module("mlflow"):
        problems.append(Problem(("logging", "mlflow"), "needs the mlflow package: pip install 'trainkit[mlflow]'"))
    if problems:
        problems.sort(key=context.sort_key)
        raise ConfigError([context.format(p) for p in problems], source)

    # Store the builders' options with their defaults, so the run is reproducible from
    # the saved config even if a later version changes a default. The validated config is
    # built once more from the completed dict rather than edited: it is frozen.
    assert config is not None  # no problems means the structure validated
    completed = config.to_dict()
    for section, resolved in options.items():
        if completed.get(section) is not None and resolved is not None:
            completed[section] = {
                "name": completed[section]["name"],
                **{k: v for k, v in completed[section].items() if k in _OWN_KEYS[section]},
                **resolved,
            }
    complete_early_stopping(completed)
    return ExperimentConfig.model_validate(completed)


def load_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, labels: dict[str, str] | None = None
) -> ExperimentConfig:
    raw, lines = read_yaml_file(path)
    return resolve(raw, overrides, source=str(path), lines=lines, default_name=Path(path).stem, labels=labels)


def get_path(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
