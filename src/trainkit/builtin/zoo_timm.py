"""The timm family: `timm.<name>` for every model `timm.list_models()` lists, and
`timm.<name>.<tag>` for a pretrained tag (`timm.resnet18.a1_in1k`), built with
`timm.create_model` (pip install 'trainkit[timm]').

timm's entry points set per-model values through the same keyword arguments the model
class takes, so the class's own defaults are not a model's: every option but
`pretrained` defaults to None, "the model's own value", and is passed only when set.
The class is found by building the model on the meta device (no memory, no weights).

`pretrained: true` reads the weights from the local Hugging Face hub cache (or the torch
hub cache for weights published by URL), never from the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from trainkit.builtin.zoo_common import adapt_channels, build_failed, check_input_size, class_options, image_shape
from trainkit.errors import ConfigError, MissingWeightsError

log = logging.getLogger("trainkit")
_NOT_OPTIONS = {"num_classes", "pretrained", "pretrained_cfg", "device", "dtype", "kwargs"}
_BUILD_ERRORS = (TypeError, ValueError, AssertionError, RuntimeError, KeyError)


def catalogue() -> dict[str, Any]:
    return {"names": sorted(timm.list_models()), "tagged": sorted(timm.list_pretrained()), "specs": {}}


def spec(name: str) -> dict[str, Any]:
    try:
        with torch.device("meta"):
            model = timm.create_model(name)
    except Exception:  # a model that cannot be built on the meta device: options are not checked
        return {"summary": f"timm model {name}", "options": _head(), "open": True, "min_size": 1}
    cls = type(model)
    options = class_options(cls, skip=_NOT_OPTIONS)
    for o in options:  # the entry point may set any of them: None = the model's own value
        o["default"] = None
        if not (o["type"].get("t") == "union" and {"t": "none"} in o["type"]["of"]):
            o["type"] = {"t": "union", "of": [o["type"], {"t": "none"}]}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("min_input_size") or (cfg.get("input_size") if cfg.get("fixed_input_size") else None)
    return {
        "summary": f"{cls.__name__} from timm",
        "options": _head() + options,
        "min_size": int(size[-1]) if size else 1,
    }


def _head() -> list[dict[str, Any]]:
    return [
        {"name": "pretrained", "type": {"t": "bool"}, "default": False, "pass_default": False},
        {
            "name": "num_classes",
            "type": {"t": "union", "of": [{"t": "int"}, {"t": "none"}]},
            "default": None,
            "pass_default": False,
        },
    ]


# ---------------------------------------------------------------- weights


def hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "huggingface" / "hub"


def cached_weights_file(name: str) -> Path:
    """The local file holding `name`'s pretrained weights, or MissingWeightsError saying where to put it."""
    key = f"timm.{name}"
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ConfigError(f"model.pretrained: {key} has no pretrained weights in timm {timm.__version__}")
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    wanted = []
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache(), revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        folder = hub_cache() / f"models--{repo.replace('/', '--')}"
        wanted.append(
            f"{names[0]} of https://huggingface.co/{repo} in {folder}/snapshots/<commit>/ with <commit> "
            f"in {folder}/refs/main (`hf download {repo}` fills that cache where there is a network)"
        )
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(str(cfg.url)).path).name
        if path.is_file():
            return path
        wanted.append(f"{path.name} from {cfg.url} in {path.parent}/")
    raise MissingWeightsError(
        f"model.pretrained: the weights of {key} are not in the local cache and trainkit never downloads: "
        f"put {' or '.join(wanted)}"
    )


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
    key = f"timm.{name}"
    c, h, w, classes = image_shape(key, input_shape, options.get("num_classes"), num_outputs)
    kwargs = {k: v for k, v in options.items() if v is not None and k not in ("pretrained", "num_classes")}
    pretrained = bool(options.get("pretrained")) and new_run
    if pretrained:
        # timm reads a local file with weights_only=True (or safetensors) and re-initialises
        # the classifier when the class count differs
        overlay = {"file": str(cached_weights_file(name)), "source": ""}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    try:
        model = timm.create_model(name, num_classes=classes, **kwargs)
    except MissingWeightsError:
        raise
    except _BUILD_ERRORS as exc:
        raise build_failed(key, exc) from None
    trained = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
    if pretrained and trained and trained != classes:
        log.info(
            f"model.pretrained: {key} was trained on {trained} classes, the data set has {classes}: "
            "its classifier is re-initialised"
        )
    adapt_channels(key, model, c)
    size_option = next((o["name"] for o in spec["options"] if o["name"] in ("img_size", "image_size")), "")
    check_input_size(key, model, (c, h, w), classes, int(spec.get("min_size", 1)), size_option)
    return model
