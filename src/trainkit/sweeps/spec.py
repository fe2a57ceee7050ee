"""The sweep file: read and validated like a config, every problem at once with its line, and
checked against the base config before any trial runs: both ends of every range and every
choice must make a valid config.

    name: lr_search                    # sweep folder: <checkpoint.dir>/<name>/
    config: mnist_fast.yaml            # base config, relative to this file
    overrides: [trainer.epochs=1]
    objective: {metric: val_accuracy, mode: max}
    params:
      optimizer.lr: {type: loguniform, low: 1.0e-4, high: 1.0}
      data.batch_size: {type: choice, values: [64, 128, 256]}
    trials: 20
    sampler: {name: tpe, seed: 0}
    pruner: {name: median, warmup_epochs: 1}

Neither torch nor Optuna is imported here, so a broken sweep file is reported at once.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from trainkit.config import ExperimentConfig, KeyPath, RunName, apply_overrides, get_path, read_yaml_file, resolve
from trainkit.errors import ConfigError, UsageError
from trainkit.registry import did_you_mean

# The epoch record's metrics (training/loop.py): what a trial can be judged by.
METRICS = ("val_loss", "val_accuracy", "val_mse", "val_mae", "train_loss")
# Keys the sweep sets itself for every trial.
SET_BY_SWEEP = {
    "name": "each trial's name is set by the sweep (trial-NNNN)",
    "checkpoint.dir": "trials are written into the sweep folder",
}
PARAM_TYPES = ("uniform", "loguniform", "int", "choice")
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UniformParam(_Strict):
    type: Literal["uniform"]
    low: float
    high: float


class LogUniformParam(_Strict):
    type: Literal["loguniform"]
    low: Annotated[float, Field(gt=0)]
    high: Annotated[float, Field(gt=0)]


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: PositiveInt = 1
    log: bool = False


class ChoiceParam(_Strict):
    type: Literal["choice"]
    values: Annotated[list[Any], Field(min_length=1)]

    @property
    def encoded(self) -> bool:
        """Optuna's categorical values are scalars; lists and mappings travel as JSON text."""
        return not all(v is None or isinstance(v, (bool, int, float, str)) for v in self.values)

    def choices(self) -> list[Any]:
        return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded else value


Param = Annotated[UniformParam | LogUniformParam | IntParam | ChoiceParam, Field(discriminator="type")]


class Objective(_Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    value: Literal["last", "best"] = "last"  # the last epoch's value, or the best epoch's


class SamplerSpec(_Strict):
    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = 0


class MedianPruner(_Strict):
    name: Literal["median"]
    warmup_epochs: NonNegativeInt = 0
    startup_trials: NonNegativeInt = 5


class HyperbandPruner(_Strict):
    name: Literal["hyperband"]
    min_epochs: PositiveInt = 1
    reduction_factor: Annotated[int, Field(ge=2)] = 3


class NoPruner(_Strict):
    name: Literal["none"]


Pruner = Annotated[MedianPruner | HyperbandPruner | NoPruner, Field(discriminator="name")]


class Heartbeat(_Strict):
    """Database storages only: a trial without a heartbeat for grace_period seconds is failed and run again."""

    interval: PositiveInt = 30
    grace_period: PositiveInt = 120


class SweepSpec(_Strict):
    name: RunName
    config: str
    overrides: list[str] = Field(default_factory=list)
    objective: Objective = Field(default_factory=Objective)
    params: Annotated[dict[str, Param], Field(min_length=1)]
    trials: PositiveInt | None = None
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: Pruner = Field(default_factory=lambda: NoPruner(name="none"))
    heartbeat: Heartbeat = Field(default_factory=Heartbeat)

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value  # `sampler: random`


_UNIONS = {"params": (2, PARAM_TYPES), "pruner": (1, ("median", "hyperband", "none"))}


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the spec, and the base config it varies."""

    spec: SweepSpec
    path: Path
    config_path: Path
    base_raw: dict[str, Any]  # the base config file as written (overrides not applied)
    base: ExperimentConfig  # resolved, with the sweep's overrides

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def folder(self) -> Path:
        return Path(self.base.checkpoint.dir) / self.spec.name

    @property
    def trials(self) -> int:
        if self.spec.trials is not None:
            return self.spec.trials
        return grid_size(self.spec)

    def raw_with(self, values: dict[str, Any]) -> dict[str, Any]:
        """The base config as written, with the sweep's overrides and these param values set."""
        raw = copy.deepcopy(self.base_raw)
        apply_overrides(raw, self.spec.overrides)
        for key, value in values.items():
            set_key(raw, key, value)
        return raw

    def trial_config(self, values: dict[str, Any], name: str) -> ExperimentConfig:
        raw = self.raw_with(values)
        raw["name"] = name
        checkpoint = raw.get("checkpoint")
        raw["checkpoint"] = {**(checkpoint if isinstance(checkpoint, dict) else {}), "dir": str(self.folder)}
        return resolve(raw, source=f"{self.path} ({name})")


def grid_size(spec: SweepSpec) -> int:
    size = 1
    for param in spec.params.values():
        size *= len(param.values) if isinstance(param, ChoiceParam) else 1
    return size


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------- loading


class SweepFileError(ConfigError):
    """Problems with a sweep file (or with the configs its params would make), all at once."""

    def _format(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{where}{self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{where}{len(self.problems)} problems in the sweep file:\n{lines}"


class _Lines:
    def __init__(self, lines: dict[KeyPath, int]):
        self.lines = lines
        self.found: list[tuple[int, str]] = []

    def add(self, path: KeyPath, message: str) -> None:
        dotted = ".".join(str(p) for p in path) or "(top level)"
        for depth in range(len(path), 0, -1):
            if path[:depth] in self.lines:
                line = self.lines[path[:depth]]
                self.found.append((line, f"line {line}: {dotted}: {message}"))
                return
        self.found.append((1 << 30, f"{dotted}: {message}"))

    def messages(self) -> list[str]:
        return [m for _, m in sorted(self.found, key=lambda item: item[0])]


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and check a sweep file and its base config; raises one SweepFileError naming every
    problem. `overrides` (from the command line) follow the file's own."""
    path = Path(path)
    raw, lines = read_yaml_file(path)
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise SweepFileError(f"the top level must be a mapping (name, config, params, ...), got {got}", str(path))
    raw = dict(raw)
    raw.setdefault("name", path.stem)
    if overrides:
        given = raw.get("overrides", [])
        raw["overrides"] = (given if isinstance(given, list) else [given]) + list(overrides)
    problems = _Lines(lines)
    spec: SweepSpec | None = None
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        _pydantic_problems(exc, raw, problems)
    parts = _Parts.of(spec, raw)  # what did validate, to check further and probe: every problem at once
    bad = _check_spec(parts, problems)
    base = None
    if parts.config is not None and parts.overrides is not None:
        config_path = path.parent / parts.config  # an absolute path stays itself
        try:
            base_raw, base_lines = read_yaml_file(config_path)
            base = resolve(base_raw, parts.overrides, source=str(config_path), lines=base_lines, default_name="base")
        except ConfigError as exc:
            for problem in exc.problems:
                problems.add(("config",), f"{config_path}: {problem}")
        except UsageError as exc:  # the file is missing or unreadable
            problems.add(("config",), str(exc))
    if base is not None:
        probe_spec = SweepSpec.model_construct(
            name="probe", config=str(parts.config), overrides=parts.overrides or [], params={}
        )
        prober = Sweep(probe_spec, path, config_path, base_raw, base)
        for key, param in parts.params.items():
            if key not in bad:
                _probe(prober, key, param, problems)
    if problems.found or spec is None or base is None:
        raise SweepFileError(problems.messages(), str(path))
    return Sweep(spec, path, config_path, base_raw, base)


@dataclass
class _Parts:
    """The parts of a sweep file that validated on their own (None where they did not)."""

    params: dict[str, Any]
    objective: Objective | None
    sampler: SamplerSpec | None
    trials: int | None
    trials_given: bool
    heartbeat: Heartbeat | None
    config: str | None
    overrides: list[str] | None

    @classmethod
    def of(cls, spec: SweepSpec | None, raw: dict[str, Any]) -> _Parts:
        if spec is not None:
            return cls(
                dict(spec.params),
                spec.objective,
                spec.sampler,
                spec.trials,
                "trials" in raw,
                spec.heartbeat,
                spec.config,
                spec.overrides,
            )
        fields = SweepSpec.model_fields

        def part(name: str) -> Any:
            value = raw[name] if name in raw else fields[name].get_default(call_default_factory=True)
            if name == "sampler" and isinstance(value, str):
                value = {"name": value}
            try:
                return TypeAdapter(cast(Any, fields[name].annotation)).validate_python(value)
            except ValidationError:
                return None

        params: dict[Any, Any] = raw["params"] if isinstance(raw.get("params"), dict) else {}
        valid = {}
        for key, value in params.items():
            try:
                valid[str(key)] = TypeAdapter(Param).validate_python(value)
            except ValidationError:
                pass
        trials, sampler = part("trials"), part("sampler")
        return cls(
            valid,
            part("objective"),
            sampler,
            trials,
            "trials" in raw,
            part("heartbeat"),
            part("config"),
            part("overrides"),
        )


def _pydantic_problems(error: ValidationError, raw: dict[str, Any], problems: _Lines) -> None:
    for err in error.errors():
        loc = list(err["loc"])
        for field, (depth, tags) in _UNIONS.items():  # drop the union member's tag pydantic puts in the path
            if loc and loc[0] == field and len(loc) > depth and loc[depth] in tags:
                del loc[depth]
        path, kind = tuple(loc), err["type"]
        if kind == "extra_forbidden":
            message = "unknown key" + did_you_mean(str(path[-1]), _known_keys(path[:-1], raw))
        elif kind == "missing":
            message = "required key is missing"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            field = "type" if path[0] == "params" else "name"
            tags = _UNIONS[str(path[0])][1]
            got = err["input"].get(field) if isinstance(err["input"], dict) else None
            path += (field,)
            message = f"should be one of {', '.join(tags)}" + (f", got {got!r}" if got is not None else "")
            if kind == "union_tag_not_found" and got is None:
                message = f"required key is missing (one of {', '.join(tags)})"
        else:
            text = err["msg"]
            for opening in ("Input should", "Value error, should"):
                if text.startswith(opening):
                    text = "should" + text[len(opening) :]
            message = f"{text}, got {err['input']!r}" if "input" in err else text
        problems.add(path, message)


def _known_keys(path: tuple, raw: dict[str, Any]) -> list[str]:
    """The key names allowed at `path` of the sweep file, for 'did you mean'."""
    models: dict[Any, type[BaseModel]] = {
        (): SweepSpec,
        ("objective",): Objective,
        ("sampler",): SamplerSpec,
        ("heartbeat",): Heartbeat,
    }
    if path in models:
        return list(models[path].model_fields)
    node: Any = raw
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    kind = node.get("type" if path[:1] == ("params",) else "name") if isinstance(node, dict) else None
    by_tag: dict[str, type[BaseModel]] = {
        "uniform": UniformParam,
        "loguniform": LogUniformParam,
        "int": IntParam,
        "choice": ChoiceParam,
        "median": MedianPruner,
        "hyperband": HyperbandPruner,
        "none": NoPruner,
    }
    return list(by_tag[kind].model_fields) if kind in by_tag else []


def _check_spec(parts: _Parts, problems: _Lines) -> set[str]:
    """What the structure alone cannot say: ranges, clashing keys, grid sizes. Returns the
    params found wrong here (they are not probed)."""
    bad: set[str] = set()
    keys = list(parts.params)

    def add(path: KeyPath, message: str) -> None:
        problems.add(path, message)
        if path[0] == "params":
            bad.add(path[1])

    for key, param in parts.params.items():
        at = ("params", key)
        parts_of_key = key.split(".")
        if any(not p or " " in p for p in parts_of_key):
            add(at, "should be a dotted config key, e.g. optimizer.lr")
            continue
        if key in SET_BY_SWEEP:
            add(at, f"cannot be swept: {SET_BY_SWEEP[key]}")
        inside = [other for other in keys if other.startswith(key + ".")]
        if inside:
            add(at, f"clashes with params.{inside[0]}: a section and a key inside it cannot both be swept")
        if isinstance(param, ChoiceParam):
            seen = [json.dumps(v, sort_keys=True) for v in param.values]
            duplicates = sorted({v for v in seen if seen.count(v) > 1})
            if duplicates:
                add(at + ("values",), f"{duplicates[0]} is given twice")
        elif param.low >= param.high:
            add(at + ("high",), f"should be greater than low ({param.low}), got {param.high}")
        elif isinstance(param, IntParam) and (param.high - param.low) % param.step:
            add(at + ("step",), f"high - low ({param.high - param.low}) should be a multiple of step {param.step}")
        elif isinstance(param, IntParam) and param.log and (param.low < 1 or param.step != 1):
            add(at + ("log",), "a log scale needs low >= 1 and step 1")
    if parts.objective is not None and parts.objective.metric not in METRICS:
        add(
            ("objective", "metric"),
            f"should be a metric of the epoch record ({', '.join(METRICS)}), got {parts.objective.metric!r}"
            + did_you_mean(parts.objective.metric, METRICS),
        )
    if parts.sampler is not None and parts.sampler.name == "grid":
        ranges = [k for k, p in parts.params.items() if not isinstance(p, ChoiceParam)]
        size = math.prod(len(p.values) for p in parts.params.values() if isinstance(p, ChoiceParam))
        if ranges:
            add(("params", ranges[0]), "the grid sampler needs every param given as type: choice")
        elif parts.trials is not None and parts.trials > size:
            add(("trials",), f"{parts.trials} is more than the {size} points of the grid")
    elif parts.sampler is not None and not parts.trials_given:
        add(("trials",), "required key is missing (how many trials to run)")
    beat = parts.heartbeat
    if beat is not None and beat.grace_period <= beat.interval:
        add(
            ("heartbeat", "grace_period"),
            f"should be longer than the interval ({beat.interval} s), got {beat.grace_period}",
        )
    return bad


def _probes(param: Any) -> list[tuple[str, Any]]:
    if isinstance(param, ChoiceParam):
        return [("value", v) for v in param.values]
    return [("low", param.low), ("high", param.high)]


def _takes_whole_numbers(sweep: Sweep, key: str) -> bool:
    """Whether the key holds an integer in the base config (as written or by default): a
    float range there is a mistake (config types are strict, so 2.0 is not an epoch count)."""
    try:
        resolved = get_path(sweep.trial_config({}, "probe").to_dict(), key)
    except ConfigError:
        return False  # the base config's own problems are reported on their own
    return isinstance(resolved, int) and not isinstance(resolved, bool)


def _probe(sweep: Sweep, key: str, param: Any, problems: _Lines) -> None:
    """Each end of a range and each choice, on the base config: a bad bound is found now, not
    after hours of trials. A problem every value shares is the key's (no such option), said once."""
    if isinstance(param, (UniformParam, LogUniformParam)) and _takes_whole_numbers(sweep, key):
        problems.add(("params", key, "type"), f"{key} takes whole numbers; use type: int (or choice)")
        return
    found: list[tuple[str, Any, list[str]]] = []
    for label, value in _probes(param):
        try:
            sweep.trial_config({key: value}, "probe")
        except ConfigError as exc:
            found.append((label, value, exc.problems))
            continue
        found.append((label, value, []))
    shared = set.intersection(*(set(p) for _, _, p in found)) if len(found) > 1 else set()
    for problem in found[0][2]:
        if problem in shared:
            problems.add(("params", key), problem)
    for label, value, listed in found:
        for problem in listed:
            if problem not in shared:
                problems.add(("params", key), f"{label} {value!r} makes an invalid config: {problem}")
