"""trainkit: train PyTorch models from a YAML config.

The public API is imported lazily, so `import trainkit` (and the CLI's --help) does not
pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainkit._version import __version__

__all__ = [
    "__version__",
    "train",
    "resume",
    "auto_resume",
    "evaluate",
    "sweep",
    "load_config",
    "MODELS",
    "DATASETS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "DataBundle",
    "DatasetInfo",
    "TensorSplit",
    "TrainkitError",
    "ConfigError",
]

_LAZY = {
    "train": "trainkit.api",
    "resume": "trainkit.api",
    "auto_resume": "trainkit.api",
    "evaluate": "trainkit.api",
    "sweep": "trainkit.api",
    "load_config": "trainkit.config",
    "MODELS": "trainkit.registry",
    "DATASETS": "trainkit.registry",
    "OPTIMIZERS": "trainkit.registry",
    "SCHEDULERS": "trainkit.registry",
    "DataBundle": "trainkit.training.data",
    "DatasetInfo": "trainkit.training.data",
    "TensorSplit": "trainkit.training.data",
    "TrainkitError": "trainkit.errors",
    "ConfigError": "trainkit.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from trainkit.api import auto_resume, evaluate, resume, sweep, train
    from trainkit.config import load_config
    from trainkit.errors import ConfigError, TrainkitError
    from trainkit.registry import DATASETS, MODELS, OPTIMIZERS, SCHEDULERS
    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names are part of the module, so dir(trainkit) and completion show them
    return sorted(set(globals()) | set(__all__))
