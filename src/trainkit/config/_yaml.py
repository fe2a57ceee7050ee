"""Safe YAML in and out, remembering the line of every key so errors can point at it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from trainkit import inputfiles
from trainkit.errors import ConfigError, UsageError

KeyPath = tuple  # ("optimizer", "lr") or ("imports", 0)


def _line_map(node: yaml.Node, source: str, path: KeyPath = ()) -> dict[KeyPath, int]:
    """Key path -> 1-based line of that key in the document; a repeated key is an error
    (YAML parsers silently keep the last one, which hides typos and merge accidents)."""
    lines: dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"line {line}: a key must be a name, not a list or a mapping", source)
            key_path = path + (key_node.value,)
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


# A config is a few dozen keys. These bounds are far above any real one and keep a hostile
# file from hanging the reader or filling memory: nine levels of aliases ("billion laughs")
# expand a few hundred bytes to 10^9 values, and deep nesting overflows Python's stack.
MAX_BYTES = 1 << 20  # of a config file
MAX_VALUES = 10_000  # nodes of the document once every alias is expanded (pure-Python PyYAML: ~0.5 s)
MAX_DEPTH = 64  # levels of nesting, aliases expanded


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float, as YAML 1.2 (and every editor) does
    (YAML 1.1 insists on a dot, `1.0e-3`, and PyYAML would return the string '1e-3'), and
    that refuses documents beyond MAX_VALUES / MAX_DEPTH while composing them, before any
    alias is expanded."""

    def __init__(self, stream: str, source: str | None):
        super().__init__(stream)
        self._source = source
        self._depth = 0
        self._values = 0
        self._aliased = 0  # of those, how many come from aliases
        self._open_anchors: set[str] = set()  # collections still being composed
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded

    def _refuse(self, mark: Any, message: str) -> ConfigError:
        where = f"line {mark.line + 1}: " if mark is not None else ""
        return ConfigError(f"{where}{message}", self._source)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is the composer's own error
                if event.anchor in self._open_anchors:
                    raise self._refuse(
                        event.start_mark, f"alias '*{event.anchor}' is inside the collection it names (a loop)"
                    )
                values, depth = self._size(target)
                self._aliased += values
                self._count(values, self._depth + depth, event.start_mark)
            return super().compose_node(parent, index)
        anchor = event.anchor if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)) else None
        self._depth += 1
        self._count(1, self._depth, event.start_mark)
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open_anchors.discard(anchor)

    def _count(self, values: int, depth: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            size = (
                f"expands to more than {MAX_VALUES} values (aliases repeat what they name: a YAML alias bomb?)"
                if self._aliased
                else f"has more than {MAX_VALUES} values"
            )
            raise self._refuse(mark, f"the document {size}; a config is far smaller")
        if depth > MAX_DEPTH:
            raise self._refuse(mark, f"nested more than {MAX_DEPTH} levels deep; a config is far flatter")

    def _size(self, node: yaml.Node) -> tuple[int, int]:
        """(values, depth) of a complete node with its aliases expanded; shared nodes are
        counted once per use but computed once, so this is linear in the document."""
        known = self._sizes.get(id(node))
        if known is None:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            sizes = [self._size(child) for child in children]
            known = (1 + sum(s[0] for s in sizes), 1 + max((s[1] for s in sizes), default=0))
            self._sizes[id(node)] = known
        return known

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # 2024-13-01, a 5000-digit integer, ...
            raise self._refuse(node.start_mark, f"cannot read this value: {exc}") from None


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse with the safe loader only; `!!python/...` tags are refused, never run."""
    try:
        loader = _Loader(text, source)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ...)
        raise ConfigError(f"YAML syntax error: {_reader_problem(exc)}", source) from None
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
        problem = exc.problem or exc.context
        if isinstance(exc, yaml.composer.ComposerError) and exc.context:  # an anchor given twice
            problem = exc.context.split(";")[0]
        raise ConfigError(f"{where}YAML syntax error: {problem}", source) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"YAML syntax error: {_reader_problem(exc)}", source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", source) from None
    finally:
        loader.dispose()


def _reader_problem(exc: yaml.reader.ReaderError) -> str:
    character = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or " ")
    return f"character #x{character:04x} at position {exc.position} is not allowed in YAML ({exc.reason})"


def read_yaml_file(path: str | os.PathLike) -> tuple[Any, dict[KeyPath, int]]:
    path = Path(path)
    try:
        data = inputfiles.read_capped(path, MAX_BYTES)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except inputfiles.NotAFile as exc:
        raise UsageError(f"{path}: {exc.strerror}; give a config file") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {inputfiles.describe(exc)}") from None
    try:
        text = data.decode("utf-8-sig")  # an editor's byte-order mark is no syntax error
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read config file {path}: not UTF-8 text (byte {exc.start})") from None
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
