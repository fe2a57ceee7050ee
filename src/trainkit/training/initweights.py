"""`model.init_from`: a new run starts from weights trained elsewhere.

The source is a trainkit run folder (its best.pt), a trainkit checkpoint (its `model`), or
a file holding a bare state_dict (also nested under "state_dict" / "model", as other tools
save them, or a .safetensors file); always read with weights_only=True. Only weights are
taken: the run itself starts fresh (new optimizer, step 0).

Keys are matched after dropping the prefixes DDP and torch.compile add. A classifier whose
class count differs is left freshly initialised (said in one line); any other key that does
not fit is a config error listing them, unless `model.init_strict: false`, which loads what
fits and lists what was skipped. What was loaded is recorded in every checkpoint of the run
(`started_from`: path, kind, SHA-256 of the weights).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.config import ExperimentConfig
from trainkit.errors import CheckpointError, ConfigError
from trainkit.runfolder.checkpoint import Checkpoint
from trainkit.runfolder.folder import checkpoint_file

log = logging.getLogger("trainkit")
KEY = "model.init_from"


def clean_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Drop the prefixes DDP ('module.') and torch.compile ('_orig_mod.') add, as timm does."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _listing(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) for k in value)
        and any(isinstance(v, torch.Tensor) for v in value.values())
    )


def read_weights(given: str) -> tuple[dict[str, Any], str, Path]:
    """(state_dict, kind, file) from a run folder, a checkpoint or a state_dict file."""
    path = Path(given).expanduser()
    if not path.exists():
        raise ConfigError(f"{KEY}: {given} does not exist")
    if path.is_dir():
        try:
            path = checkpoint_file(path)
        except CheckpointError as exc:
            raise ConfigError(f"{KEY}: {exc}") from None
    if path.suffix == ".safetensors":
        return _read_safetensors(path), "state_dict", path
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise ConfigError(
                f"{KEY}: {path} refused: it holds Python objects beyond tensors and plain data "
                f"({refused.group(1)}); trainkit only loads with weights_only=True"
            ) from None
        raise ConfigError(
            f"{KEY}: {path} is not a checkpoint or state_dict file (it does not read as tensors and plain data)"
        ) from None
    except Exception as exc:
        raise ConfigError(f"{KEY}: {path} is not a checkpoint or state_dict file ({_first_line(exc)})") from None
    if isinstance(raw, dict) and "format_version" in raw and "model" in raw:
        try:
            checkpoint = Checkpoint.from_dict(raw, path)
        except CheckpointError as exc:
            raise ConfigError(f"{KEY}: {exc}") from None
        return checkpoint.model, "checkpoint", path
    for candidate in (raw, *(raw.get(k) for k in ("state_dict", "model", "model_state_dict") if isinstance(raw, dict))):
        if _is_state_dict(candidate):
            return candidate, "state_dict", path
    raise ConfigError(
        f"{KEY}: {path} is neither a trainkit checkpoint nor a state_dict (a dict of parameter names to tensors)"
    )


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(f"{KEY}: {path} is a .safetensors file; reading it needs: pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ConfigError(f"{KEY}: {path} is not a readable safetensors file ({exc})") from None


def weights_sha256(state: dict[str, Any]) -> str:
    """A hash of the weights themselves (names, dtypes, shapes, values): the same weights
    saved by another tool, or with an optimizer beside them, hash alike."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def init_from(module: nn.Module, cfg: ExperimentConfig, num_outputs: int | None) -> dict[str, Any]:
    """Load `cfg.model.init_from` into `module`; returns the record kept in checkpoints."""
    assert cfg.model.init_from is not None  # the caller checks
    state, kind, path = read_weights(cfg.model.init_from)
    state = clean_keys(state)
    own = module.state_dict()
    shape = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    missing = [k for k in own if k not in shape]
    unexpected = [k for k in state if k not in own]
    misfit = [k for k in own if k in shape and shape[k] != tuple(own[k].shape)]
    # the classifier of another class count: (classes_there, ...) vs (classes_here, ...)
    heads = [
        k for k in misfit if own[k].dim() >= 1 and own[k].shape[0] == num_outputs and shape[k][1:] == own[k].shape[1:]
    ]
    misfit = [k for k in misfit if k not in heads]
    problems = (
        [f"missing {_listing(missing)}"] * bool(missing)
        + [f"unexpected {_listing(unexpected)}"] * bool(unexpected)
        + [f"{k} is {shape[k]} there, {tuple(own[k].shape)} here" for k in misfit[:3]]
        + [f"{len(misfit) - 3} more of another shape"] * (len(misfit) > 3)
    )
    if problems and cfg.model.init_strict:
        raise ConfigError(
            f"{KEY}: {path} does not fit model '{cfg.model.name}': {'; '.join(problems)} "
            "(model.init_strict: false loads what fits)"
        )
    fits = {k: v for k, v in state.items() if k in own and k not in misfit and k not in heads}
    try:
        module.load_state_dict(fits, strict=False)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{KEY}: {path}: the weights do not load into the model ({_first_line(exc)})") from None
    if heads:
        log.info(
            f"{KEY}: {', '.join(heads)} re-initialised: {path} has {shape[heads[0]][0]} classes, "
            f"the data set {num_outputs}"
        )
    skipped = missing + unexpected + misfit
    if skipped:
        log.info(f"{KEY}: loaded {len(fits)} of {len(own)} tensors; skipped: {'; '.join(problems)}")
    return {
        "path": str(path.resolve()),
        "kind": kind,
        "weights_sha256": weights_sha256(state),
        "reinitialized": heads,
        "skipped": skipped,
    }
