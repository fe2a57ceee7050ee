"""Models by name from torchvision and timm: `torchvision.resnet18`, `timm.convnext_atto`.

A zoo model is one more builder. Each family registers with MODELS as a resolver of the
names under its prefix; what a name's builder takes (its options, their types and
defaults) is described by a *spec*, plain JSON computed from the library itself
(zoo_torchvision.py, zoo_timm.py) and kept in a cache file per library version, so that
`trainkit validate` and `trainkit ls` answer without importing torch once a name has
been seen. This module never imports torch.

A spec: {"summary": str, "options": [{"name", "type", "default", "pass_default"}, ...]}.
Types are a small JSON grammar (see `python_type`) covering what a YAML file can hold.
An option is passed to the library only when its value differs from the spec's default
(or `pass_default` is set), so "not written" always means the library's own default.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Union

from trainkit._version import __version__
from trainkit.errors import RegistryError
from trainkit.registry import MODELS, Entry

SPEC_FORMAT = 1  # bump when the spec grammar changes: older cache files are then ignored
RUNTIME = ("input_shape", "num_outputs", "new_run")  # what trainkit passes to every zoo builder


# ---------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """$TRAINKIT_CACHE_DIR, else $XDG_CACHE_HOME/trainkit, else ~/.cache/trainkit."""
    explicit = os.environ.get("TRAINKIT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "trainkit"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or damaged: computed again
    return data if isinstance(data, dict) and data.get("format") == SPEC_FORMAT else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Temp file + rename: a reader sees the old cache or the new one. A cache that cannot
    be written (read-only home) only costs the next run the time to compute it again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError:
        pass


# ---------------------------------------------------------------- types


def python_type(desc: Any) -> Any:
    """A spec type -> the Python annotation pydantic validates with."""
    kind = desc.get("t") if isinstance(desc, dict) else None
    basic = {"int": int, "float": float, "bool": bool, "str": str, "none": type(None), "dict": dict[str, Any]}
    if kind in basic:
        return basic[kind]
    if kind == "list":
        return list[python_type(desc["of"])]  # type: ignore[misc]
    if kind == "union":
        return Union[tuple(python_type(d) for d in desc["of"])]  # noqa: UP007 (built at run time)
    if kind == "literal":
        return Literal[tuple(desc["values"])]
    return Any


def _signature(spec: dict[str, Any]) -> tuple[inspect.Signature, dict[str, Any]]:
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in RUNTIME]
    hints: dict[str, Any] = {}
    for option in spec["options"]:
        hints[option["name"]] = python_type(option["type"])
        params.append(inspect.Parameter(option["name"], inspect.Parameter.KEYWORD_ONLY, default=option["default"]))
    if spec.get("open"):  # the library's signature could not be read: any option goes to it
        params.append(inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params), hints


class ZooBuilder:
    """The builder of one zoo name: its signature is the spec's, its call the family's build."""

    def __init__(self, family: Family, name: str, spec: dict[str, Any]):
        self.family, self.name, self.spec = family, name, spec
        self.__signature__, self.__annotations__ = _signature(spec)
        self.__doc__ = spec.get("summary", "")
        self.__qualname__ = f"{family.prefix}.{name}"

    def __call__(self, **kwargs: Any) -> Any:
        module = importlib.import_module(self.family.module)
        return module.build(self.name, self.spec, **kwargs)


# ---------------------------------------------------------------- families


class Family:
    """One library's models. Subclasses say which package, and how specs are computed
    (`module`: the trainkit module that imports the library and defines `names(version)`,
    `spec(name)` and `build(name, spec, **inputs)`)."""

    prefix = ""
    package = ""  # the import name, e.g. "torchvision"
    extra = ""  # the pip extra that installs it, e.g. "timm" for trainkit[timm]
    module = ""  # trainkit.builtin.zoo_<prefix>

    def __init__(self) -> None:
        self._data: dict[str, Any] | None = None
        self._entries: dict[str, Entry] = {}

    def missing(self) -> str | None:
        if importlib.util.find_spec(self.package) is None:
            how = f"pip install 'trainkit[{self.extra}]'" if self.extra else f"pip install {self.package}"
            return f"needs the {self.package} package: {how}"
        return None

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def _path(self) -> Path:
        return cache_dir() / f"zoo-{self.prefix}-{self.version()}-trainkit-{__version__}-v{SPEC_FORMAT}.json"

    def data(self) -> dict[str, Any]:
        """{"names": [...], "specs": {name: spec}, ...}: from the cache, else from the library."""
        if self._data is None:
            cached = _read_json(self._path())
            if cached is None or not isinstance(cached.get("names"), list):
                computed = self._ask("catalogue")
                cached = {"format": SPEC_FORMAT, **computed}
                _write_json(self._path(), cached)
            cached.setdefault("specs", {})
            self._data = cached
        return self._data

    def _ask(self, what: str, *args: Any) -> Any:
        """The library's answer through trainkit's module for it; a library that fails to
        import or describe itself is one config error, not a traceback."""
        try:
            return getattr(importlib.import_module(self.module), what)(*args)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RegistryError(
                f"model family '{self.prefix}': cannot read {self.package} {self.version()}'s models ({text})"
            ) from None

    def names(self) -> list[str]:
        return list(self.data()["names"])

    def known(self, name: str) -> bool:
        return name in set(self.data()["names"])

    def suggestions(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, self.names(), n=3, cutoff=0.6)

    def spec(self, name: str) -> dict[str, Any]:
        data = self.data()
        spec = data["specs"].get(name)
        if spec is None:  # computed on first use (timm builds the model on the meta device)
            spec = self._ask("spec", name)
            data["specs"][name] = spec
            on_disk = _read_json(self._path()) or {"format": SPEC_FORMAT, "names": data["names"], "specs": {}}
            on_disk.setdefault("specs", {})[name] = spec  # another process may have added others
            _write_json(self._path(), on_disk)
        return spec

    def entry(self, name: str) -> Entry | None:
        if name not in self._entries:
            if not self.known(name):
                return None
            key = f"{self.prefix}.{name}"
            builder = ZooBuilder(self, name, self.spec(name))
            self._entries[name] = Entry(
                key,
                builder,
                f"{self.module} ({self.package} {self.version()})",
                {
                    "settable": ("num_classes",),
                },
            )
        return self._entries[name]


class TorchvisionFamily(Family):
    prefix = package = "torchvision"
    module = "trainkit.builtin.zoo_torchvision"


class TimmFamily(Family):
    prefix = package = extra = "timm"
    module = "trainkit.builtin.zoo_timm"

    def known(self, name: str) -> bool:
        # `timm.resnet18` and a pretrained tag `timm.resnet18.a1_in1k`
        data = self.data()
        return name in set(data["names"]) or name in set(data.get("tagged", []))

    def spec(self, name: str) -> dict[str, Any]:
        return super().spec(name.split(".")[0])  # a tag picks weights, not another architecture


MODELS.add_family(TorchvisionFamily())
MODELS.add_family(TimmFamily())
