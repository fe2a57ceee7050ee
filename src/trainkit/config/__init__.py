"""Experiment configs: YAML -> overrides -> one validated, immutable `ExperimentConfig`.

This package never imports torch (a test keeps it so): `trainkit validate`, `ls` and
`schema` answer without it.
"""

from trainkit.config._metrics import TASK_METRICS, check_metric_for_task, infer_mode
from trainkit.config._overrides import apply_overrides, parse_override
from trainkit.config._sections import (
    AugmentConfig,
    CheckpointConfig,
    ComponentConfig,
    DataConfig,
    EarlyStoppingConfig,
    ExperimentConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParamGroupConfig,
    RunName,
    SchedulerConfig,
    Seed,
    TrainerConfig,
)
from trainkit.config._validate import get_path, load_config, options_model, resolve
from trainkit.config._yaml import KeyPath, dump_yaml, parse_yaml, read_yaml_file

__all__ = [
    "AugmentConfig",
    "CheckpointConfig",
    "ComponentConfig",
    "DataConfig",
    "EarlyStoppingConfig",
    "ExperimentConfig",
    "KeyPath",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "ParamGroupConfig",
    "RunName",
    "SchedulerConfig",
    "TASK_METRICS",
    "TrainerConfig",
    "apply_overrides",
    "check_metric_for_task",
    "dump_yaml",
    "get_path",
    "infer_mode",
    "load_config",
    "options_model",
    "parse_override",
    "parse_yaml",
    "read_yaml_file",
    "resolve",
    "Seed",
]
