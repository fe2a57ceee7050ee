"""The torchvision family: every classification model `torchvision.models.list_models`
lists, built with `torchvision.models.get_model`.

Options of a name = the keyword parameters of the model class it returns (those a YAML
file can express) + the keyword arguments its builder reads itself (`kwargs.pop("dropout",
0.2)`, a helper's `width_mult=1.0`), minus those the builder passes on its own, plus
`weights` (its enum's names) and `num_classes` (the data set's unless given).

Pretrained weights come from the local torch hub cache only: torchvision's own loader
(which would download, and unpickles with weights_only=False) is swapped, for the length
of the call, for one that reads the cached file with weights_only=True or says which
file to put where.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import textwrap
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models
from torch import nn
from torchvision.models import _api

from trainkit.builtin.zoo_common import (
    adapt_channels,
    build_failed,
    check_input_size,
    class_options,
    image_shape,
    option,
    passed,
    replace_heads,
)
from trainkit.errors import CheckpointError, MissingWeightsError

log = logging.getLogger("trainkit")

# Options trainkit sets differently from the class: one logits tensor in training (no
# auxiliary heads), and the weight initialisation torchvision asks users to choose.
_OWN_DEFAULTS = {"aux_logits": False, "init_weights": True}
# Sizes that follow the data set when left unset (a ViT at CIFAR's 32x32, say).
_FROM_DATA = {"image_size": lambda h, w: h, "input_size": lambda h, w: [h, w]}


def catalogue() -> dict[str, Any]:
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    return {"names": names, "specs": {name: spec(name) for name in names}}


# ---------------------------------------------------------------- specs


def _functions(builder: Callable) -> list[tuple[Callable, ast.FunctionDef]]:
    """The builder and the module-private helpers it calls (`_resnet`, `_vision_transformer`),
    each with its syntax tree."""
    module = inspect.getmodule(builder)
    found: list[tuple[Callable, ast.FunctionDef]] = []
    queue = [builder]
    while queue:
        function = queue.pop(0)
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        except (OSError, TypeError, SyntaxError):
            continue
        node = next((n for n in tree.body if isinstance(n, ast.FunctionDef)), None)
        if node is None:
            continue
        found.append((function, node))
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id.startswith("_"):
                helper = getattr(module, call.func.id, None)
                if inspect.isfunction(helper) and all(helper is not f for f, _ in found) and helper not in queue:
                    queue.append(helper)
    return found


def _reads(node: ast.FunctionDef) -> dict[str, Any]:
    """`kwargs.pop("x", default)` in a function: keyword arguments it reads itself, with defaults."""
    found: dict[str, Any] = {}
    for call in ast.walk(node):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "pop"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "kwargs"
            and len(call.args) == 2
            and isinstance(call.args[0], ast.Constant)
        ):
            with contextlib.suppress(ValueError, TypeError, SyntaxError):
                found[str(call.args[0].value)] = ast.literal_eval(call.args[1])
    return found


def _forced(node: ast.FunctionDef) -> set[str]:
    """`_ovewrite_named_param(kwargs, "groups", 32)` at the top of a builder: a value it
    always sets (ResNeXt's groups), so not the user's to choose."""
    forced: set[str] = set()
    for statement in node.body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "_ovewrite_named_param"
            and len(call.args) >= 2
            and isinstance(call.args[1], ast.Constant)
        ):
            forced.add(str(call.args[1].value))
    return forced


def spec(name: str) -> dict[str, Any]:
    builder = torchvision.models.get_model_builder(name)
    cls = typing.get_type_hints(builder)["return"]
    reads: dict[str, Any] = {}  # kwargs.pop("x", default) somewhere in the chain: settable
    defaults: dict[str, Any] = {}  # a helper's keyword with a default (width_mult=1.0): settable
    fixed: set[str] = {"num_classes", "weights", "progress"}  # given by the builder itself
    for function, node in _functions(builder):
        for key, default in _reads(node).items():
            reads.setdefault(key, default)
        fixed |= _forced(node)
        if function is not builder:
            for p in inspect.signature(function).parameters.values():
                if p.kind is p.VAR_KEYWORD or p.name in ("weights", "progress"):
                    continue
                if p.default is p.empty:
                    fixed.add(p.name)
                else:
                    defaults.setdefault(p.name, p.default)
    extra = {**{k: v for k, v in defaults.items() if k not in fixed}, **reads}
    hints = _hints(cls)
    options = class_options(cls, skip=fixed | set(extra) | set(_FROM_DATA))
    for key, default in extra.items():
        desc = option(key, hints.get(key, type(default)), None if key in _FROM_DATA else default)
        if desc is not None:
            options.append(desc)
    for o in options:
        if o["name"] in _OWN_DEFAULTS:
            o["default"], o["pass_default"] = _OWN_DEFAULTS[o["name"]], True
    enum = _api._get_enum_from_fn(builder)
    weights = list(dict.fromkeys(["DEFAULT", *enum.__members__]))
    head = [
        {
            "name": "weights",
            "type": {"t": "union", "of": [{"t": "literal", "values": weights}, {"t": "none"}]},
            "default": None,
            "pass_default": False,
        },
        {
            "name": "num_classes",
            "type": {"t": "union", "of": [{"t": "int"}, {"t": "none"}]},
            "default": None,
            "pass_default": False,
        },
    ]
    min_sizes = [member.meta.get("min_size", (1, 1))[0] for member in enum]
    return {
        "summary": f"{cls.__name__} from torchvision.models (weights: {', '.join(weights)})",
        "options": head + options,
        "min_size": min(min_sizes) if min_sizes else 1,
    }


def _hints(cls: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve
        return {}


# ---------------------------------------------------------------- weights


def cached_weights_file(weights: _api.WeightsEnum) -> Path:
    """Where torch.hub keeps this download: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _read_cached(weights: _api.WeightsEnum) -> dict[str, Any]:
    path = cached_weights_file(weights)
    if not path.is_file():
        raise MissingWeightsError(
            f"model.weights: {type(weights).__name__}.{weights.name} is not in the local torch hub cache and "
            f"trainkit never downloads: put {path.name} (from {weights.url}) in {path.parent}/ "
            "(the cache is $TORCH_HOME/hub/checkpoints, ~/.cache/torch by default)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read these weights with weights_only=True ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state_dict ({type(state).__name__})")
    return state


class _NoWeights(dict):
    """What the loader hands torchvision when a checkpoint's weights will replace them anyway."""


_NONE = _NoWeights()


@contextlib.contextmanager
def _weights_from(new_run: bool) -> Iterator[None]:
    """For the length of one builder call: weights come from the local cache (a new run) or
    not at all (the model is rebuilt to receive a checkpoint's weights), never a download."""
    original_get = _api.WeightsEnum.get_state_dict
    original_load = nn.Module.load_state_dict

    def get_state_dict(self: _api.WeightsEnum, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _read_cached(self) if new_run else _NONE

    def load_state_dict(self: nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        if state_dict is _NONE:
            return nn.modules.module._IncompatibleKeys([], [])
        return original_load(self, state_dict, *args, **kwargs)

    _api.WeightsEnum.get_state_dict = get_state_dict
    nn.Module.load_state_dict = load_state_dict  # type: ignore[method-assign]
    try:
        yield
    finally:
        _api.WeightsEnum.get_state_dict = original_get
        nn.Module.load_state_dict = original_load  # type: ignore[method-assign]


# ---------------------------------------------------------------- build


def build(
    name: str,
    spec: dict[str, Any],
    *,
    input_shape: tuple[int, ...],
    num_outputs: int | None,
    new_run: bool = False,
    **options: Any,
) -> nn.Module:
    key = f"torchvision.{name}"
    c, h, w, classes = image_shape(key, input_shape, options.get("num_classes"), num_outputs)
    weights = options.get("weights")
    kwargs = passed(spec, options, skip=("weights", "num_classes"))
    for size_key, size in _FROM_DATA.items():
        if size_key in options and options[size_key] is None and weights is None:
            kwargs[size_key] = size(h, w)
    if weights is not None:  # the weights fix these; torchvision refuses other values
        kwargs = {k: v for k, v in kwargs.items() if k not in _OWN_DEFAULTS or v != _OWN_DEFAULTS[k]}
    else:
        kwargs["num_classes"] = classes
    try:
        with _weights_from(new_run):
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise build_failed(key, exc) from None
    if weights is not None:
        _strip_aux(model, options)
        member = _api._get_enum_from_fn(torchvision.models.get_model_builder(name)).verify(weights)
        trained = len(member.meta.get("categories") or ())
        if trained and trained != classes:
            heads = replace_heads(model, trained, classes)
            if new_run:
                log.info(
                    f"model.weights: {weights} was trained on {trained} classes, the data set has {classes}: "
                    f"{', '.join(heads)} re-initialised"
                )
    adapt_channels(key, model, c)
    check_input_size(key, model, (c, h, w), classes, int(spec.get("min_size", 1)))
    return model


def _strip_aux(model: nn.Module, options: dict[str, Any]) -> None:
    """GoogLeNet / Inception weights come with auxiliary heads; drop them unless asked for."""
    if getattr(model, "aux_logits", False) and not options.get("aux_logits"):
        model.aux_logits = False  # type: ignore[assignment]
        for attr in ("AuxLogits", "aux1", "aux2"):
            if getattr(model, attr, None) is not None:
                setattr(model, attr, None)
