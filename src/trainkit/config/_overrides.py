"""Command-line overrides, Hydra style: `optimizer.lr=0.1`, `~optimizer.momentum`, `+trainer.grad_clip=1`."""

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
    elif text.startswith("+") and "=" in text:
        # Hydra's `+key=value` (add) and `++key=value` (add or override): trainkit's keys are
        # fixed by its schema, so both set a key it has (an unknown one is reported as usual)
        key, _, value = text.lstrip("+").partition("=")
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
        yaml.compose(value, Loader=yaml.SafeLoader)  # the syntax alone, to say where it breaks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at column {mark.column + 1}" if mark and mark.line == 0 else ""
        problem = exc.problem or exc.context or "cannot be parsed"
        raise ConfigError(f"malformed override '{text}': YAML syntax error in the value{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed override '{text}': YAML syntax error in the value: {exc}") from None
    try:
        parsed = parse_yaml(value, "override")[0] if value.strip() else None
    except ConfigError as exc:  # e.g. a !!python tag, refused as in a config file
        raise ConfigError(f"malformed override '{text}': {'; '.join(exc.problems)}") from None
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
