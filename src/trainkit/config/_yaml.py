"""Safe YAML in and out, remembering the line of every key so errors can point at it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from trainkit.errors import ConfigError, UsageError

KeyPath = tuple  # ("optimizer", "lr") or ("imports", 0)


def _line_map(node: yaml.Node, source: str, path: KeyPath = ()) -> dict[KeyPath, int]:
    """Key path -> 1-based line of that key in the document; a repeated key is an error
    (YAML parsers silently keep the last one, which hides typos and merge accidents)."""
    lines: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            line = key_node.start_mark.line + 1
            if key_path in lines:
                dotted = ".".join(map(str, key_path))
                raise ConfigError(f"line {line}: {dotted}: key given twice (first on line {lines[key_path]})", source)
            lines[key_path] = line
            lines.update(_line_map(value_node, source, key_path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            lines.update(_line_map(item, source, path + (i,)))
    return lines


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float, as YAML 1.2 (and every editor) does;
    YAML 1.1 insists on a dot (`1.0e-3`) and PyYAML would return the string '1e-3'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse with the safe loader only; `!!python/...` tags are refused, never run."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines = _line_map(node, source)
        return loader.construct_document(node), lines
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        tag = getattr(exc, "problem", "") or ""
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(
            f"{where}{tag.strip()} (trainkit reads YAML with safe_load; python tags are not allowed)",
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


class _BlockDumper(yaml.SafeDumper):
    """Sections as indented blocks, one key per line; only lists of plain values stay on one
    line (`channels: [32, 64]`), as a person writes a config."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_BlockDumper.add_representer(list, _represent_list)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=4096)
