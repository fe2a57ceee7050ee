"""What the torchvision and timm families share: option specs from Python signatures, and
fitting an ImageNet architecture to the data set's images (channels, size).

Imported only when a zoo model is described or built (it imports torch).
"""

from __future__ import annotations

import collections.abc
import inspect
import itertools
import json
import logging
import types
import typing
from typing import Any

import torch
from torch import nn

from trainkit.errors import ConfigError

log = logging.getLogger("trainkit")


# ---------------------------------------------------------------- option specs


def describe(annotation: Any) -> dict[str, Any] | None:
    """A type annotation -> the spec's JSON type, keeping what YAML can express
    (None when nothing can: callables, classes, config objects)."""
    basic = {int: "int", float: "float", bool: "bool", str: "str", type(None): "none"}
    if annotation in basic:
        return {"t": basic[annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [d for d in (describe(a) for a in args) if d is not None]
        if not parts or parts == [{"t": "none"}]:
            return None
        return parts[0] if len(parts) == 1 else {"t": "union", "of": parts}
    if origin is typing.Literal:
        values = [v for v in args if isinstance(v, (int, float, str, bool)) or v is None]
        return {"t": "literal", "values": values} if values else None
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        items = [a for a in args if a is not Ellipsis] or [Any]
        inner = describe(items[0] if len(set(items)) == 1 else typing.Union[tuple(items)])  # noqa: UP007
        return {"t": "list", "of": inner} if inner is not None else None
    if origin is dict or annotation is dict:
        return {"t": "dict"}
    return None


def json_default(value: Any) -> tuple[bool, Any]:
    """(True, the default as JSON) or (False, None) when JSON cannot hold it."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        return json.loads(json.dumps(value)) == value, json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return False, None


def option(name: str, annotation: Any, default: Any, pass_default: bool = False) -> dict[str, Any] | None:
    """One spec option; a default JSON cannot hold becomes None ("the library's default")."""
    desc = describe(annotation)
    if desc is None:
        return None
    fits, value = json_default(default)
    if not fits or value is None:
        value = None
        if desc != {"t": "none"} and not (desc.get("t") == "union" and {"t": "none"} in desc["of"]):
            desc = {"t": "union", "of": [desc, {"t": "none"}]}
    return {"name": name, "type": desc, "default": value, "pass_default": pass_default}


def class_options(cls: Any, skip: set[str]) -> list[dict[str, Any]]:
    """The keyword parameters of `cls.__init__` that have a default and a YAML-able type."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: use the raw ones
        hints = {}
    found = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name in skip or p.default is p.empty or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        spec = option(p.name, hints.get(p.name, p.annotation), p.default)
        if spec is not None:
            found.append(spec)
    return found


def passed(spec: dict[str, Any], options: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options to hand to the library: those that differ from the spec's default."""
    defaults = {o["name"]: o for o in spec["options"]}
    out = {}
    for key, value in options.items():
        known = defaults.get(key)
        if key in skip:
            continue
        if known is None or value != known["default"] or known["pass_default"]:
            out[key] = value
    return out


def build_failed(key: str, exc: Exception) -> ConfigError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"model.name: {key} cannot be built with these options: {text}")


# ---------------------------------------------------------------- inputs


def image_shape(
    key: str, input_shape: tuple[int, ...], given: int | None, num_outputs: int | None
) -> tuple[int, int, int, int]:
    """(channels, height, width, outputs): the model's `num_classes` if given, else the data
    set's outputs; a config error for non-image data or a class count that cannot fit."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name: {key} takes images (channels, height, width); the data set gives shape {tuple(input_shape)}"
        )
    if given is not None and (given < 1 or (num_outputs and given < num_outputs)):
        raise ConfigError(
            f"model.num_classes: {given} cannot hold the data set's {num_outputs} classes (leave it out to match them)"
        )
    classes = given or num_outputs
    if not classes:
        raise ConfigError(f"model.name: {key} needs the data set's number of outputs; it gives none")
    c, h, w = input_shape
    return c, h, w, classes


def stem(model: nn.Module) -> nn.Module | None:
    """The first convolution (or patch embedding): the layer that takes the image."""
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d))), None)


class GrayToRGB:
    """Forward pre-hook: 1-channel images repeated to the 3 channels the stem was built for
    (the state_dict stays the architecture's, so 3-channel weights load as they are)."""

    def __init__(self, first: nn.Module):
        self.first = first

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].expand(-1, 3, -1, -1)
        weight = getattr(self.first, "weight", None)
        # the layout the convolution wants, so a channels-last model is not fed NCHW
        layout = torch.channels_last if weight is not None and _channels_last(weight) else torch.contiguous_format
        return (x.contiguous(memory_format=layout), *args[1:])


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def adapt_channels(key: str, model: nn.Module, channels: int) -> None:
    first = stem(model)
    wanted = getattr(first, "in_channels", channels)
    if wanted == channels:
        return
    if channels == 1 and wanted == 3:
        model.register_forward_pre_hook(GrayToRGB(first))  # type: ignore[arg-type]
        return
    raise ConfigError(f"model.name: {key} takes {wanted}-channel images; the data set has {channels} channels")


def forward_on_meta(model: nn.Module, shape: tuple[int, ...], train: bool = True, batch: int = 2) -> Any:
    """The model's output for a batch of `shape` computed on the meta device: shapes only,
    no memory, no random draws, and the model's own tensors left untouched."""
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    was = model.training
    model.train(train)
    try:
        return torch.func.functional_call(model, state, (torch.empty((batch, *shape), device="meta"),))
    finally:
        model.train(was)


def _fits(model: nn.Module, shape: tuple[int, ...]) -> str | None:
    try:
        forward_on_meta(model, shape)
        return None
    except Exception as exc:  # any failure of the forward pass: the size does not fit
        text = str(exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__


def check_input_size(
    key: str, model: nn.Module, shape: tuple[int, int, int], num_classes: int, hint: int, size_option: str = ""
) -> None:
    """The images go through the model as they are, or a config error naming the smallest
    size that does. `hint` is the library's documented minimum, tried first; `size_option`
    the model's option that sets the size it is built for (timm's img_size), if any."""
    c, h, w = shape
    problem = _fits(model, shape)
    if problem is None:
        _check_output(key, model, shape, num_classes)
        return
    smallest = None
    sizes = sorted({hint, 32, 64, 96, 128, 160, 192, 224, 256, 299, 384, 512} - {0})
    for size in [s for s in sizes if s > min(h, w)]:
        if _fits(model, (c, max(size, h), max(size, w))) is None:
            smallest = size
            break
    if smallest is None:
        raise ConfigError(f"model.name: {key} cannot take {h}x{w} images: {problem}")
    other = f", or build the model for them (model.{size_option}: {h})" if size_option and h == w else ""
    raise ConfigError(
        f"model.name: {key} needs images of at least {smallest}x{smallest} pixels; the data set gives "
        f"{h}x{w} ({problem}); resize them (data.image_size: {smallest} on data sets that have it){other}"
    )


def _check_output(key: str, model: nn.Module, shape: tuple[int, ...], num_classes: int) -> None:
    out = forward_on_meta(model, shape)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"model.name: {key} returns {type(out).__name__} in training, not one tensor of logits; "
            "trainkit trains the main output (turn auxiliary outputs off, e.g. model.aux_logits: false)"
        )
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(
            f"model.name: {key} gives outputs of shape {tuple(out.shape[1:])} per image; "
            f"the data set has {num_classes} classes"
        )


def replace_heads(model: nn.Module, old: int, new: int) -> list[str]:
    """Swap every classifier layer with `old` outputs (a Linear, or squeezenet's 1x1 conv) for
    a freshly initialised one with `new`; returns their names."""
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            fresh: nn.Module | None = None
            if isinstance(child, nn.Linear) and child.out_features == old:
                fresh = nn.Linear(child.in_features, new, bias=child.bias is not None)
            elif isinstance(child, nn.Conv2d) and child.out_channels == old and child.kernel_size == (1, 1):
                fresh = nn.Conv2d(child.in_channels, new, 1, bias=child.bias is not None)
            if fresh is not None:
                setattr(parent, name, fresh.to(child.weight.dtype))
                replaced.append(f"{parent_name}.{name}".lstrip("."))
    return replaced
