"""Which columns a table run uses, and as what: the target, the features, which are categorical.

Everything here answers from the column names and types (and, for text that looks like
numbers, the values) of the training file, before any row is encoded; the problems are
config mistakes (exit 2) named by their key, with a did-you-mean where a name is close.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trainkit.builtin.table_read import TableFile, arrow_array, listing, to_numpy
from trainkit.errors import ConfigError, DataContentError
from trainkit.registry import did_you_mean

log = logging.getLogger("trainkit")
MAX_INFERRED_CLASSES = 20  # an integer target with at most this many values is a classification


@dataclass
class Columns:
    target: str
    features: list[str]
    categorical: set[str]
    task: str

    @property
    def as_text(self) -> set[str]:
        """The columns read as text values: the categorical features, and a class target."""
        return self.categorical | ({self.target} if self.task == "classification" else set())


def kind_of(arrow_type: Any) -> str:
    """number, text, or what else the column holds (for messages)."""
    import pyarrow as pa

    t = arrow_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_null(t):
        return "empty"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_temporal(t):
        return "dates or times"
    return f"values of type {t}"


def _quoted(names: list[str]) -> str:
    return listing([f"'{n}'" for n in names])


def _known(key: str, name: str, file: TableFile) -> None:
    names = file.table.column_names
    if name not in names:
        raise ConfigError(
            f"{key}: no column '{name}' in {file.name}{did_you_mean(name, names)} (columns: {_quoted(names)})"
        )


def _not_a_number(text: str, decimal: str) -> bool:
    if "_" in text:  # Python's float() takes 1_000; CSV readers do not
        return True
    try:
        float(text.replace(decimal, ".") if decimal != "." else text)
        return False
    except ValueError:
        return True


def mostly_numbers(file: TableFile, name: str, decimal: str) -> str | None:
    """A message if a text column is numbers but for a few values (a typo reads the whole
    column as text); None if it is genuinely text. Looks at the distinct values only."""
    import numpy as np
    import pyarrow.compute as pc

    column = file.table.column(name)
    values = pc.unique(column).drop_null().to_pylist()
    bad = {v for v in values if _not_a_number(v, decimal)}
    if decimal == "." and values and len(bad) == len(values):
        commas = [v for v in values if not _not_a_number(v, ",")]
        if len(commas) >= 0.9 * len(values):
            return (
                f"{file.name}: column '{name}' holds numbers with a decimal comma ({commas[0]!r}); "
                "set data.decimal: ',' (or list it in data.categorical to use it as categories)"
            )
    if not values or len(bad) == len(values):
        return None
    if not bad:  # every value is a number to Python, yet the reader kept text: say so, do not guess
        return (
            f"{file.name}: column '{name}' holds numbers in a form the CSV reader does not take "
            f"({values[0]!r}); write them plainly, or list '{name}' in data.categorical"
        )
    bad_rows = np.flatnonzero(to_numpy(pc.is_in(column, value_set=arrow_array(sorted(bad)))))
    present = len(column) - column.null_count
    if len(bad_rows) > 0.1 * present:
        return None  # a real mix of codes and numbers (sizes S, M, L, 10): text
    shown = ", ".join(f"row {file.row(i)}: {column[int(i)].as_py()!r}" for i in bad_rows[:5])
    more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
    return (
        f"{file.name}: column '{name}' holds numbers except in {len(bad_rows)} "
        f"row{'s' if len(bad_rows) != 1 else ''} ({shown}{more}); fix those values (or leave them empty "
        f"for data.missing), or list '{name}' in data.categorical to use it as categories"
    )


def infer_task(file: TableFile, target: str) -> str:
    """A string, bool or integer target with few values is a classification; else regression."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = file.table.column(target)
    kind = kind_of(column.type)
    if kind != "number":
        return "classification"
    t = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_boolean(t):
        return "classification"
    if pa.types.is_integer(t) and len(pc.unique(column).drop_null()) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def choose_columns(
    file: TableFile,
    target: str,
    features: list[str] | None,
    categorical: list[str] | None,
    task: str | None,
    decimal: str,
) -> Columns:
    """The target, the feature columns in order, which are categorical, and the task."""
    _known("data.target", target, file)
    names = file.table.column_names
    if features is None:
        # A column without a name is most often the index pandas writes by default (to_csv
        # without index=False): a row number, not a feature.
        features = [n for n in names if n != target and n.strip()]
        for i, n in enumerate(names):
            if not n.strip() and n != target:
                log.info("%s: column %d has no name (an index pandas wrote?): not a feature", file.name, i + 1)
    else:
        for name in features:
            _known("data.features", name, file)
        twice = sorted({n for n in features if features.count(n) > 1})
        if twice:
            raise ConfigError(f"data.features: lists {_quoted(twice)} more than once")
        if target in features:
            raise ConfigError(f"data.features: lists the target '{target}'; a model cannot take its own answer")
    if not features:
        raise ConfigError(f"data.features: {file.name} has no columns besides the target '{target}'")
    for name in categorical or []:
        if name == target:
            raise ConfigError(f"data.categorical: '{name}' is the target; data.task: classification makes it classes")
        if name not in features:
            _known("data.categorical", name, file)
            raise ConfigError(f"data.categorical: '{name}' is not one of the features")
    chosen = set(categorical or [])
    for name in features:
        kind = kind_of(file.table.column(name).type)
        if name in chosen or kind in ("number", "empty"):
            continue
        if kind == "text":
            typo = mostly_numbers(file, name, decimal)
            if typo:
                raise DataContentError(typo)
            if categorical is None:
                chosen.add(name)  # default: text columns are categorical
                continue
        raise DataContentError(
            f"{file.name}: feature '{name}' holds {kind}, not numbers; list it in data.categorical "
            "or leave it out of data.features"
        )
    inferred = task or infer_task(file, target)
    if inferred == "regression" and kind_of(file.table.column(target).type) != "number":
        raise DataContentError(
            f"{file.name}: target '{target}' holds {kind_of(file.table.column(target).type)}; "
            "regression needs numbers (or set data.task: classification)"
        )
    return Columns(target, list(features), chosen, inferred)


def check_same_columns(train: TableFile, test: TableFile, columns: Columns, decimal: str) -> None:
    """The test file must have the training file's columns, each of the same kind."""
    a, b = train.table.column_names, test.table.column_names
    if set(a) != set(b):
        lacks, extra = [n for n in a if n not in b], [n for n in b if n not in a]
        parts = ([f"lacks {_quoted(lacks)}"] if lacks else []) + ([f"has {_quoted(extra)} too"] if extra else [])
        raise DataContentError(
            f"{test.name}: has other columns than {train.name}: it {' and '.join(parts)}; "
            "both files need the same columns"
        )
    # categorical features and class labels are compared as text; numbers must stay numbers
    numeric = [n for n in columns.features if n not in columns.categorical]
    for name in numeric + ([columns.target] if columns.task == "regression" else []):
        train_kind, test_kind = kind_of(train.table.column(name).type), kind_of(test.table.column(name).type)
        if "number" in (train_kind, test_kind) and "empty" not in (train_kind, test_kind) and train_kind != test_kind:
            typo = mostly_numbers(test, name, decimal) if test_kind == "text" else None
            raise DataContentError(
                typo or f"{test.name}: column '{name}' holds {test_kind}, but {train_kind} in {train.name}"
            )
