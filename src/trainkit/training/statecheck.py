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


def param_state_problems(optimizer: torch.optim.Optimizer, saved: Any = None) -> Iterator[str]:
    """Per-parameter optimizer state that would fail (or silently misbehave) in a step: of the
    loaded optimizer, or of a `saved` state_dict before it is loaded (torch's own loading
    fails on some damage with messages of its internals; dtypes are checked after, since
    loading casts them to the parameter's)."""
    pairs = list(_saved_pairs(optimizer, saved)) if saved is not None else list(_loaded_pairs(optimizer))
    # the buffers one parameter has, every parameter with state has (Adam's exp_avg, ...)
    common = {k for _, _, state in pairs if isinstance(state, dict) for k in state}
    common &= PARAM_SHAPED | {"step"}
    for param, where, state in pairs:
        if not isinstance(state, dict):
            yield f"optimizer state of {where} is {_kind(state)}"
            continue
        if state and common - set(state):
            yield f"optimizer state of {where} lacks {', '.join(sorted(common - set(state)))}"
        for key, value in state.items():
            yield from _value_problems(param, f"optimizer state '{key}' of {where}", key, value, saved is None)


def _loaded_pairs(optimizer: torch.optim.Optimizer) -> Iterator[tuple[torch.Tensor, str, Any]]:
    for g, group in enumerate(optimizer.param_groups):
        for i, param in enumerate(group["params"]):
            if param in optimizer.state:
                yield param, f"param {g}.{i}", optimizer.state[param]


def _saved_pairs(optimizer: torch.optim.Optimizer, saved: Any) -> Iterator[tuple[torch.Tensor, str, Any]]:
    """(parameter, name, its saved state), matched as torch matches them: group by group, in order."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        return
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        return  # torch's own loading names this
    for g, (group, saved_group) in enumerate(zip(optimizer.param_groups, groups, strict=True)):
        ids = saved_group.get("params") if isinstance(saved_group, dict) else None
        if not isinstance(ids, list) or len(ids) != len(group["params"]):
            return
        for i, (param, index) in enumerate(zip(group["params"], ids, strict=True)):
            if isinstance(index, (int, str)) and index in saved["state"]:
                yield param, f"param {g}.{i}", saved["state"][index]


def _value_problems(param: torch.Tensor, at: str, key: str, value: Any, check_dtype: bool) -> Iterator[str]:
    if key in PARAM_SHAPED:
        if value is None and key == "momentum_buffer":
            return  # SGD before its first step with momentum
        if not (isinstance(value, torch.Tensor) and value.shape == param.shape):
            yield f"{at} is {_describe(value)}, the parameter is {tuple(param.shape)}"
        elif check_dtype and (
            value.is_floating_point() != param.is_floating_point() or value.is_complex() != param.is_complex()
        ):
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
