"""Is a checkpoint's optimizer and scheduler state fit to train with?

`optimizer.load_state_dict` and `scheduler.load_state_dict` take almost anything: a
hand-edited or damaged file loads, then the first step fails deep in torch (`'list'
object has no attribute 'mul_'`, a shape that does not broadcast). These checks run
right after loading and name the field instead:
- a scheduler's and the optimizer's hyper-parameters must have the kinds a fresh one has
  (every key present; numbers, flags, lists of the same length; `same_kinds`);
- per-parameter optimizer state must fit its parameter: the moment buffers of torch's
  optimizers have its exact shape and a floating dtype, `step` is one number, other
  tensors broadcast to it (factored state such as Adafactor's), other values are scalars.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

# per-parameter buffers of torch.optim that always have the parameter's shape
PARAM_SHAPED = {
    "momentum_buffer",
    "exp_avg",
    "exp_avg_sq",
    "max_exp_avg_sq",
    "square_avg",
    "acc_delta",
    "grad_avg",
    "sum",
    "exp_inf",
    "ax",
    "prev",
    "step_size",
}
_SCALARS = (bool, int, float, str, type(None))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a flag"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, torch.Tensor):
        return "a tensor"
    return type(value).__name__


def same_kinds(fresh: Any, loaded: Any, where: str, missing_ok: bool = False) -> Iterator[str]:
    """Problems where `loaded` does not have the structure of `fresh` (extra keys are fine,
    and with `missing_ok` missing ones: a file from an older torch lacks newer attributes;
    a None in `fresh`, an unset option, accepts any plain value)."""
    if fresh is None:
        if not isinstance(loaded, _SCALARS):
            yield f"{where} is {_kind(loaded)}"
    elif isinstance(fresh, dict):
        if not isinstance(loaded, dict):
            yield f"{where} is {_kind(loaded)}, not a mapping"
            return
        for key, value in fresh.items():
            if key in loaded:
                yield from same_kinds(value, loaded[key], f"{where}.{key}", missing_ok)
            elif not missing_ok:
                yield f"{where}.{key} is missing"
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(loaded, (list, tuple)) or len(loaded) != len(fresh):
            yield f"{where} is {_kind(loaded)}{_length(loaded)}, not a list of {len(fresh)}"
            return
        for i, (a, b) in enumerate(zip(fresh, loaded, strict=True)):
            yield from same_kinds(a, b, f"{where}[{i}]", missing_ok)
    elif isinstance(fresh, torch.Tensor):
        if not isinstance(loaded, torch.Tensor) or loaded.shape != fresh.shape:
            yield f"{where} is {_describe(loaded)}, not {_describe(fresh)}"
    elif _kind(fresh) != _kind(loaded) and isinstance(fresh, _SCALARS):
        yield f"{where} is {_kind(loaded)} ({_short(loaded)}), not {_kind(fresh)}"


def _length(value: Any) -> str:
    return f" of {len(value)}" if isinstance(value, (list, tuple)) else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).replace('torch.', '')} tensor of shape {tuple(value.shape)}"
    return _kind(value)


def _broadcasts(shape: torch.Size, to: torch.Size) -> bool:
    if len(shape) > len(to):
        return False
    return all(a in (1, b) for a, b in zip(reversed(shape), reversed(to), strict=False))


def param_state_problems(optimizer: torch.optim.Optimizer) -> Iterator[str]:
    """Per-parameter optimizer state that would fail (or silently misbehave) in a step."""
    names = {
        id(p): f"param {g}.{i}" for g, group in enumerate(optimizer.param_groups) for i, p in enumerate(group["params"])
    }
    for param, state in optimizer.state.items():
        if not isinstance(param, torch.Tensor):
            continue
        where = names.get(id(param), "a parameter")
        if not isinstance(state, dict):
            yield f"optimizer state of {where} is {_kind(state)}"
            continue
        for key, value in state.items():
            at = f"optimizer state '{key}' of {where}"
            if key in PARAM_SHAPED:
                if value is None and key == "momentum_buffer":
                    continue  # SGD before its first step with momentum
                if not (isinstance(value, torch.Tensor) and value.shape == param.shape):
                    yield f"{at} is {_describe(value)}, the parameter is {tuple(param.shape)}"
                elif value.is_floating_point() != param.is_floating_point() or value.is_complex() != param.is_complex():
                    yield f"{at} is {_describe(value)}, the parameter is {str(param.dtype).replace('torch.', '')}"
            elif key == "step":
                if isinstance(value, torch.Tensor):
                    if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
                        yield f"{at} is {_describe(value)}, not one number"
                elif not isinstance(value, (int, float)) or isinstance(value, bool):
                    yield f"{at} is {_kind(value)}, not a number"
            elif isinstance(value, torch.Tensor):
                if not _broadcasts(value.shape, param.shape):
                    yield f"{at} is {_describe(value)}, which does not fit the parameter's {tuple(param.shape)}"
            elif not isinstance(value, _SCALARS):
                yield f"{at} is {_kind(value)}"
