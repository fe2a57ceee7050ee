"""Command-line overrides, Hydra style: `optimizer.lr=0.1`, `~optimizer.momentum`."""

from __future__ import annotations

from typing import Any

import yaml

from trainkit.config._yaml import KeyPath, parse_yaml
from trainkit.errors import ConfigError

_DELETE = object()  # the value of a `~key` override


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """'optimizer.lr=0.1' -> (('optimizer', 'lr'), 0.1); values are YAML scalars.
    '~optimizer.momentum' (Hydra's syntax) removes a key, e.g. when switching optimizers."""
    if text.startswith("~") and "=" not in text:
        key, value = text[1:], _DELETE
    else:
        key, sep, value = text.partition("=")
        if not sep:
            key = ""
    parts = tuple(key.strip().split("."))
    if not key.strip() or any(not p or " " in p for p in parts):
        raise ConfigError(
            f"malformed override '{text}': expected key=value, e.g. optimizer.lr=0.1 (or ~key to remove one)"
        )
    if not isinstance(value, str):  # _DELETE
        return parts, value
    try:
        parsed = parse_yaml(value, "override")[0] if value.strip() else None
    except (yaml.YAMLError, ConfigError):
        raise ConfigError(f"malformed override '{text}': the value is not a YAML scalar") from None
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[KeyPath, str]:
    """Set (or remove) each override in `raw`, in place; returns key path -> override text."""
    origin: dict[KeyPath, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override '{text}': {where} is a value, not a section")
            node = child
        if value is _DELETE:
            if path[-1] not in node:
                raise ConfigError(f"override '{text}': {'.'.join(path)} is not set, so it cannot be removed")
            del node[path[-1]]
        else:
            node[path[-1]] = value
            origin[path] = text
    return origin
