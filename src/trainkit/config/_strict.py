"""Builder options get the config's strict types: a number is a number, a float is finite.

pydantic's lax mode reads `lr: true` as 1.0 and `hidden: "64"` as 64, and takes
`lr: .inf`. The fixed sections are validated in strict mode (_sections.py), but a
builder's options cannot be: strict mode would refuse a YAML list for a `tuple[int, ...]`
option. So the scalar types inside a builder's type hints are made strict one by one
(`list[int]` becomes a list of strict ints; `Annotated[float, Field(gt=0)]` keeps its
constraint), containers stay lax. An int is still a fine float (`lr: 1`).

An option without a type hint is checked by its default: a number's must be a finite
number (int or float, not a bool), a bool's a bool; anything else stays unchecked.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Annotated, Any, Union, cast

from pydantic import AllowInfNan, Strict

_SCALARS: dict[Any, Any] = {
    bool: Annotated[bool, Strict()],
    int: Annotated[int, Strict()],
    float: Annotated[float, Strict(), AllowInfNan(False)],
    str: Annotated[str, Strict()],
}
_ANNOTATED, _UNION = cast(Any, Annotated), cast(Any, Union)  # hints built at run time, not annotations
FiniteNumber = _UNION[_SCALARS[int], _SCALARS[float]]
_REBUILDABLE = (list, tuple, set, frozenset, dict, collections.abc.Sequence, collections.abc.Mapping)


def strict_hint(hint: Any) -> Any:
    """The same type hint with its scalar types strict (see the module's docstring)."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if not args:
        return hint
    if origin is Annotated:
        return _ANNOTATED[(strict_hint(args[0]),) + tuple(hint.__metadata__)]
    if origin is Union or origin is types.UnionType:
        return _UNION[tuple(strict_hint(a) for a in args)]
    if origin in _REBUILDABLE:
        inner = tuple(a if a is Ellipsis else strict_hint(a) for a in args)
        try:
            return origin[inner if len(inner) > 1 else inner[0]]
        except TypeError:  # an alias that cannot be rebuilt this way: leave it as written
            return hint
    return hint  # Literal, user classes, ...: as written


def hint_from_default(default: Any) -> Any:
    """The type an unannotated option's default implies, or Any."""
    if isinstance(default, bool):
        return _SCALARS[bool]
    if isinstance(default, (int, float)):
        return FiniteNumber
    return Any
