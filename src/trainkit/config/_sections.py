"""The fixed structure of an experiment config, as pydantic models.

Component sections (model, data, optimizer, scheduler) hold `name:` plus the builder's
options; those are checked against the builder's signature in `_validate.py`. Every model
is frozen: a validated config is the record of a run, so code derives a new config
(`with_values`) instead of editing one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
# The seeds Python's random, numpy (np.random.seed) and torch all accept. Derived seeds stay
# valid too: seed + rank + step is reduced for numpy and fits torch's 64 bits (rng.py), and
# mix_seed folds any integers into 63 bits (batches.py).
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# Strict types: a number is a number (`epochs: true` is no 1, `"3"` is no 3; an int is a fine
# float) and floats are finite (`lr: .inf` is a mistake). Builder options get the same rules
# (_strict.py).
STRICT = ConfigDict(strict=True, allow_inf_nan=False)


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
    # frozen: the resolved config is the run's record; code derives new values, never edits it
    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)


class ComponentConfig(BaseModel):
    """`name:` picks the registered builder; every other key is one of its options."""

    model_config = ConfigDict(extra="allow", frozen=True, **STRICT)
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SchedulerConfig(ComponentConfig):
    start_epoch: NonNegativeInt = Field(
        0,
        description="epochs trained before this schedule began; set by `trainkit resume` when an explicit "
        "scheduler.name=... gives a resumed run a new schedule (0 for a new run)",
    )


def _ordered_pair(lowest: float, highest: float | None):
    def check(pair: tuple[float, float]) -> tuple[float, float]:
        low, high = pair
        if not (lowest < low <= high and (highest is None or high <= highest)):
            bound = f" and at most {highest}" if highest is not None else ""
            raise ValueError(f"should be [low, high] with {lowest} < low <= high{bound}")
        return pair

    return AfterValidator(check)


# YAML has lists, no tuples; strict mode takes only a tuple for a tuple field
_AS_TUPLE = BeforeValidator(lambda value: tuple(value) if isinstance(value, list) else value)


class RandomResizedCropConfig(_Section):
    scale: Annotated[tuple[float, float], _AS_TUPLE, _ordered_pair(0.0, 1.0)] = Field(
        (0.08, 1.0), description="range of the crop's area, as a fraction of the image's"
    )
    ratio: Annotated[tuple[float, float], _AS_TUPLE, _ordered_pair(0.0, None)] = Field(
        (3 / 4, 4 / 3), description="range of the crop's width / height"
    )


class _TuningKeys(ComponentConfig):
    """A component section with fine-tuning keys: written out only when set, so the config
    of an ordinary run reads as before they existed."""

    @model_serializer(mode="wrap")
    def _only_set_tuning_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key, spec in type(self).model_fields.items():
            if key != "name" and key in data and data[key] == spec.get_default(call_default_factory=True):
                del data[key]
        return data


class ModelConfig(_TuningKeys):
    init_from: str | None = Field(
        None, description="start a new run from these weights: a run folder, a trainkit checkpoint or a state_dict file"
    )
    init_strict: bool = Field(True, description="false: load what fits init_from and list what was skipped")
    freeze: list[str] = Field(
        default_factory=list, description="glob patterns of parameter names to keep fixed, e.g. ['conv1.*', 'layer1.*']"
    )
    freeze_bn: bool = Field(False, description="batch norm in the frozen parts keeps its running statistics fixed")


class ParamGroupConfig(BaseModel):
    """`params:` glob pattern(s) of parameter names; every other key is an optimizer option for them."""

    model_config = ConfigDict(extra="allow", frozen=True, **STRICT)
    params: str | Annotated[list[str], Field(min_length=1)]

    def patterns(self) -> list[str]:
        return [self.params] if isinstance(self.params, str) else list(self.params)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerConfig(_TuningKeys):
    param_groups: list[ParamGroupConfig] = Field(
        default_factory=list, description="each parameter goes to the first group whose pattern matches it"
    )
    no_decay_norm_and_bias: bool = Field(False, description="no weight decay for biases and normalisation weights")


class AugmentConfig(_Section):
    crop_padding: NonNegativeInt = Field(0, description="random crop after zero padding by this many pixels; 0 = off")
    hflip: bool = Field(False, description="random horizontal flip with probability 0.5")
    random_resized_crop: RandomResizedCropConfig | None = Field(
        None, description="a random crop of random area and aspect ratio, resized back to the image's size"
    )


class DataConfig(ComponentConfig):
    batch_size: PositiveInt = Field(64, description="training batch size, per process")
    eval_batch_size: PositiveInt | None = Field(
        None,
        description="evaluation batch size, per process; unset: 1000 on a GPU, 128 on the CPU (whose caches and "
        "allocator keep a smaller batch's activations: evaluation about a third faster)",
    )
    num_workers: NonNegativeInt | None = Field(
        None,
        description="loader worker processes for data read from disk or a Dataset (0: the main process); "
        "unset: this machine's cores, at most 8",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class EarlyStoppingConfig(_Section):
    metric: str = Field(
        "val_loss",
        description="a metric the run records: val_loss, val_accuracy, train_loss (classification); "
        "val_loss, val_mse, val_mae, val_r2, train_loss (regression)",
    )
    mode: Literal["min", "max"] | None = Field(
        None, description="unset: from the metric (accuracy, r2: max; loss, mse, mae: min)"
    )
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
    host_memory: Literal["keep", "default"] | None = Field(
        None,
        description="CPU runs: keep freed host memory for reuse (glibc malloc thresholds, process-wide) or "
        "leave malloc as it is; unset: keep under the trainkit command, default through the Python API",
    )
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="training loss only (classification)")
    accumulate_grad_batches: PositiveInt = 1
    limit_batches: PositiveInt | None = Field(None, description="train on at most this many batches per epoch")
    limit_eval_batches: PositiveInt | None = Field(None, description="evaluate on at most this many batches")
    early_stopping: EarlyStoppingConfig | None = None
    unfreeze_at_epoch: Annotated[int, Field(ge=2)] | None = Field(
        None, description="model.freeze's parameters start training at the start of this epoch (1-based)"
    )


class CheckpointConfig(_Section):
    dir: str = Field("checkpoints", description="runs are written to <dir>/<name>/")
    every_n_steps: NonNegativeInt = Field(0, description="also save every N optimizer steps; 0 = epoch ends only")
    keep_last: Annotated[int, Field(ge=2)] = Field(
        2, description="step checkpoints kept (the newest and older good ones)"
    )


class MlflowConfig(_Section):
    tracking_uri: str | None = Field(
        None, description="where to track; unset: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder"
    )
    experiment: str | None = Field(None, description="MLflow experiment; unset: $MLFLOW_EXPERIMENT_NAME, else Default")
    log_checkpoints: Literal["best", "all", "none"] = Field(
        "best", description="artifacts: best.pt when the run completes, every checkpoint as saved, or none"
    )


def _mlflow_switch(value: Any) -> Any:
    # `mlflow: true` is MLflow with every default, `mlflow: false` none at all
    if value is True:
        return {}
    return None if value is False else value


def _also_boolean(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [{"type": "boolean"}, *schema.get("anyOf", [])]


class LoggingConfig(_Section):
    tensorboard: bool = Field(
        False, description="also write TensorBoard event files (pip install trainkit[tensorboard])"
    )
    mlflow: Annotated[MlflowConfig | None, BeforeValidator(_mlflow_switch)] = Field(
        None,
        description="true or {tracking_uri, experiment, log_checkpoints}: track the run in MLflow "
        "(pip install trainkit[mlflow])",
        json_schema_extra=_also_boolean,
    )


class ExperimentConfig(_Section):
    name: RunName = Field(description="run folder: <checkpoint.dir>/<name>/")
    seed: Seed = Field(0, description=f"seeds every random generator; 0 to {MAX_SEED}")
    imports: list[str] = Field(default_factory=list, description="modules imported first; they may register components")
    model: ModelConfig
    data: DataConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.checkpoint.dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_values(self, changes: dict[str, Any]) -> ExperimentConfig:
        """A new validated config with dotted keys set ({"trainer.precision": "fp32"})."""
        data = self.to_dict()
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split(".")
            for part in parents:
                node = node[part]
            node[last] = value
        return type(self).model_validate(data)
