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
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from trainkit import plugins
from trainkit.errors import ConfigError
from trainkit.registry import REGISTRIES, Registry, did_you_mean
from trainkit.yamlio import KeyPath, parse_yaml, read_yaml_file

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


def _matching(pattern: str, expected: str):
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"should be {expected}")
        return value

    return AfterValidator(check)


def _pattern(pattern: str) -> Any:
    # _matching gives a readable message; the schema keeps the pattern for editors
    return Field(json_schema_extra={"pattern": f"^({pattern})$"})


_NAME, _DEVICE = r"[A-Za-z0-9][A-Za-z0-9._-]*", r"auto|cpu|mps|cuda(:\d+)?"
RunName = Annotated[str, _matching(_NAME, "a folder name (letters, digits, '.', '_', '-')"), _pattern(_NAME)]
Device = Annotated[str, _matching(_DEVICE, "one of auto, cpu, cuda, cuda:N, mps"), _pattern(_DEVICE)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentConfig(BaseModel):
    """`name:` picks the registered builder; every other key is one of its options."""

    model_config = ConfigDict(extra="allow")
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AugmentConfig(_Section):
    crop_padding: NonNegativeInt = Field(0, description="random crop after zero padding by this many pixels; 0 = off")
    hflip: bool = Field(False, description="random horizontal flip with probability 0.5")


class DataConfig(ComponentConfig):
    batch_size: PositiveInt = Field(64, description="training batch size, per process")
    eval_batch_size: PositiveInt = Field(1000, description="evaluation batch size, per process")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class EarlyStoppingConfig(_Section):
    metric: str = Field("val_loss", description="a key of the epoch record, e.g. val_loss, val_accuracy")
    mode: Literal["min", "max"] = "min"
    patience: PositiveInt = Field(3, description="epochs without improvement before stopping")
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class TrainerConfig(_Section):
    epochs: PositiveInt = 5
    device: Device = Field("auto", description="auto picks cuda, then mps, then cpu")
    log_every: PositiveInt = Field(50, description="steps between metric reads (each read is a device sync)")
    grad_clip: Annotated[float, Field(gt=0)] | None = Field(None, description="max global gradient norm")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the model")
    channels_last: bool = False
    cudnn_benchmark: bool = Field(True, description="let cuDNN pick the fastest kernels (CUDA only)")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="training loss only (classification)")
    accumulate_grad_batches: PositiveInt = 1
    limit_batches: PositiveInt | None = Field(None, description="train on at most this many batches per epoch")
    limit_eval_batches: PositiveInt | None = Field(None, description="evaluate on at most this many batches")
    early_stopping: EarlyStoppingConfig | None = None


class CheckpointConfig(_Section):
    dir: str = Field("checkpoints", description="runs are written to <dir>/<name>/")
    every_n_steps: NonNegativeInt = Field(0, description="also save every N optimizer steps; 0 = epoch ends only")
    keep_last: Annotated[int, Field(ge=2)] = Field(2, description="step checkpoints kept (the newest and older good ones)")


class LoggingConfig(_Section):
    tensorboard: bool = Field(False, description="also write TensorBoard event files (pip install trainkit[tensorboard])")


class ExperimentConfig(_Section):
    name: RunName = Field(description="run folder: <checkpoint.dir>/<name>/")
    seed: int = 0
    imports: list[str] = Field(default_factory=list, description="modules imported first; they may register components")
    model: ComponentConfig
    data: DataConfig
    optimizer: ComponentConfig
    scheduler: ComponentConfig | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoint.dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys of a component section that belong to trainkit, not to the builder.
_OWN_KEYS = {section: set(model.model_fields) for section, model in
             {"model": ComponentConfig, "data": DataConfig, "optimizer": ComponentConfig,
              "scheduler": ComponentConfig}.items()}


@dataclass(frozen=True)
class Problem:
    path: KeyPath
    message: str


class _Context:
    """Where each key came from (file line or command-line override), for messages."""

    def __init__(self, lines: dict[KeyPath, int], overrides: dict[KeyPath, str]):
        self.lines, self.overrides = lines, overrides

    def format(self, problem: Problem) -> str:
        dotted = ".".join(str(p) for p in problem.path) or "(top level)"
        for depth in range(len(problem.path), 0, -1):
            prefix = problem.path[:depth]
            if prefix in self.overrides:
                return f"override '{self.overrides[prefix]}': {dotted}: {problem.message}"
            if prefix in self.lines:
                return f"line {self.lines[prefix]}: {dotted}: {problem.message}"
        return f"{dotted}: {problem.message}"

    def sort_key(self, problem: Problem) -> tuple[int, str]:
        for depth in range(len(problem.path), 0, -1):
            if problem.path[:depth] in self.lines:
                return self.lines[problem.path[:depth]], ""
        return 1 << 30, ".".join(map(str, problem.path))


# ---------------------------------------------------------------- overrides

_DELETE = object()  # the value of a `~key` override


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """'optimizer.lr=0.1' -> (('optimizer', 'lr'), 0.1); values are YAML scalars.
    '~optimizer.momentum' (Hydra's syntax) removes a key, e.g. when switching optimizers."""
    if text.startswith("~") and "=" not in text:
        key, value = text[1:], _DELETE
    else:
        key, sep, value = text.partition("=")
        if not sep:
            key = ""
    parts = tuple(key.strip().split("."))
    if not key.strip() or any(not p or " " in p for p in parts):
        raise ConfigError(f"malformed override '{text}': expected key=value, e.g. optimizer.lr=0.1 "
                          "(or ~key to remove one)")
    if value is _DELETE:
        return parts, value
    try:
        parsed = parse_yaml(value, "override")[0] if value.strip() else None
    except (yaml.YAMLError, ConfigError):
        raise ConfigError(f"malformed override '{text}': the value is not a YAML scalar") from None
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[KeyPath, str]:
    """Set (or remove) each override in `raw`, in place; returns key path -> override text."""
    origin: dict[KeyPath, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override '{text}': {where} is a value, not a section")
            node = child
        if value is _DELETE:
            if path[-1] not in node:
                raise ConfigError(f"override '{text}': {'.'.join(path)} is not set, so it cannot be removed")
            del node[path[-1]]
        else:
            node[path[-1]] = value
            origin[path] = text
    return origin


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
        elif kind == "missing":
            message = "required key is missing"
        else:
            text = err["msg"]
            for opening in ("Input should", "Value error, should"):
                if text.startswith(opening):
                    text = "should" + text[len(opening):]
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
        candidates = [a for a in getattr(field.annotation, "__args__", ()) if isinstance(a, type)]
        candidates.append(field.annotation)
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return None
        model = nested
    return list(model.model_fields)


def options_model(registry: Registry, name: str) -> type[BaseModel]:
    """A pydantic model of the builder's options, from its signature and type hints."""
    hints = registry.type_hints(name)
    fields = {}
    for pname, param in registry.options(name).items():
        default = ... if param.default is param.empty else param.default
        fields[pname] = (hints.get(pname, Any), default)
    extra = "allow" if registry.accepts_any_option(name) else "forbid"
    config = ConfigDict(extra=extra, arbitrary_types_allowed=True)
    try:
        return create_model(f"{registry.kind}_{name}_options", __config__=config, **fields)
    except Exception:  # exotic annotations in user code: check the names only
        loose = {k: (Any, d) for k, (_, d) in fields.items()}
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
    problems = []
    for key in given:
        if key in registry.runtime_inputs:
            problems.append(Problem((section, key), f"is supplied by trainkit when the {registry.kind} is built; remove it"))
    given = {k: v for k, v in given.items() if k not in registry.runtime_inputs}
    try:
        validated = options_model(registry, name).model_validate(given)
    except ValidationError as exc:
        for problem in _pydantic_problems(exc, (section,)):
            if problem.message.startswith("unknown key"):
                listing = ", ".join(known) or "none"
                problem = Problem(problem.path, f"{registry.kind} '{name}' has no option '{problem.path[-1]}'"
                                  f"{did_you_mean(problem.path[-1], known)} (options: {listing})")
            problems.append(problem)
        return problems, None
    try:
        resolved = validated.model_dump(mode="json")
    except Exception:  # a default that JSON cannot hold: keep what the user wrote
        resolved = dict(given)
    return problems, resolved


def resolve(raw: Any, overrides: list[str] | tuple[str, ...] = (), *, source: str | None = None,
            lines: dict[KeyPath, int] | None = None, default_name: str | None = None) -> ExperimentConfig:
    """Raw YAML data + overrides -> validated config, or one ConfigError naming every problem."""
    if raw is None:
        raise ConfigError("the config is empty; it needs at least model, data and optimizer sections", source)
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of keys (name, model, data, ...), got {type(raw).__name__}", source)
    raw = copy.deepcopy(raw)
    context = _Context(lines or {}, apply_overrides(raw, overrides))
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
    if config is not None and config.logging.tensorboard and not plugins.has_module("tensorboard"):
        problems.append(Problem(("logging", "tensorboard"), "needs the tensorboard package: pip install 'trainkit[tensorboard]'"))
    if problems:
        problems.sort(key=context.sort_key)
        raise ConfigError([context.format(p) for p in problems], source)

    # Store the builders' options with their defaults, so the run is reproducible from
    # the saved config even if a later version changes a default.
    for section, resolved in options.items():
        component = getattr(config, section)
        if component is not None and resolved is not None:
            component.model_extra.clear()
            component.model_extra.update(resolved)
    return config


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    raw, lines = read_yaml_file(path)
    return resolve(raw, overrides, source=str(path), lines=lines, default_name=Path(path).stem)


def get_path(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
