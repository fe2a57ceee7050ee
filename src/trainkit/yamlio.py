"""Safe YAML in and out, remembering the line of every key so errors can point at it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from trainkit.errors import ConfigError, UsageError

KeyPath = tuple  # ("optimizer", "lr") or ("imports", 0)


def _line_map(node: yaml.Node, path: KeyPath = ()) -> dict[KeyPath, int]:
    """Key path -> 1-based line of that key in the document."""
    lines: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            lines[key_path] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, key_path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            lines.update(_line_map(item, path + (i,)))
    return lines


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse with the safe loader only; `!!python/...` tags are refused, never run."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        return loader.construct_document(node), _line_map(node)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        tag = getattr(exc, "problem", "") or ""
        raise ConfigError(
            f"line {mark.line + 1}: {tag.strip()} (trainkit reads YAML with safe_load; "
            "python tags are not allowed)",
            source,
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}YAML syntax error: {exc.problem or exc.context}", source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", source) from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | os.PathLike) -> tuple[Any, dict[KeyPath, int]]:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None
    return parse_yaml(text, str(path))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
