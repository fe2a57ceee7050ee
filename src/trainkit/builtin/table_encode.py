"""Rows of a table -> the model's float inputs and its targets, by a recorded `Plan`.

The plan is decided on the training rows only (vocabularies, standardisation statistics,
class names, the regression target's scale) and saved in every checkpoint, so resume, eval
and any later use encode rows exactly as training did. Missing values: `error` lists them,
`drop` leaves their rows out, `mean` fills a numeric cell with the training mean (0 once
standardised) and a categorical cell with the training frequencies of its categories (the
mean of its one-hot columns).

Categorical columns are one-hot encoded, not embedded: the data then stays one (rows,
inputs) float tensor on the device (the fast in-memory path), every model that takes a
flat vector (`mlp`, `linear_regression`, a user's) works unchanged and sizes itself from
the input count, `linear_regression` keeps one readable weight per category, and an
exported model takes a plain float vector. The cost, one input per category, is bounded by
`max_categories`. A category the training rows never showed (in the test rows, or at eval)
encodes as all zeros, "none of the known categories", and is reported in one warning.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from trainkit.builtin.table_columns import Columns
from trainkit.builtin.table_read import TableFile, arrow_array, listing, to_numpy
from trainkit.errors import DataContentError

log = logging.getLogger("trainkit")


@dataclass
class Plan:
    """How raw columns become inputs and targets; plain data, saved in the data record."""

    target: str
    task: str
    features: list[str]
    categories: dict[str, list[str]]  # categorical feature -> its training categories, sorted
    frequencies: dict[str, list[float]]  # their shares in the training rows (fills a missing cell)
    mean: dict[str, float]  # numeric feature -> training mean (fills a missing cell)
    std: dict[str, float]  # training standard deviation (1 for a constant column)
    classes: list[str] | None = None
    target_mean: float | None = None  # regression: the model predicts (y - target_mean) / target_std
    target_std: float | None = None

    def input_names(self) -> list[str]:
        """One name per model input: the numeric column, or 'column=category'."""
        names = []
        for name in self.features:
            names += [f"{name}={c}" for c in self.categories[name]] if name in self.categories else [name]
        return names

    def input_scale(self) -> tuple[list[float], list[float]]:
        """Per input, input = (raw - mean) / std: what an exported model must apply (one-hot: 0, 1)."""
        mean, std = [], []
        for name in self.features:
            width = len(self.categories[name]) if name in self.categories else 1
            mean += [0.0] * width if name in self.categories else [self.mean[name]]
            std += [1.0] * width if name in self.categories else [self.std[name]]
        return mean, std

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> Plan:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


class Raw:
    """A file's columns as numpy arrays (numbers: float64, missing = NaN) or pyarrow text
    (missing = null), each converted once."""

    def __init__(self, file: TableFile):
        self.file = file
        self._numbers: dict[str, Any] = {}
        self._texts: dict[str, Any] = {}

    def numbers(self, name: str) -> Any:
        if name not in self._numbers:
            import pyarrow as pa
            import pyarrow.compute as pc

            column = self.file.table.column(name)
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            self._numbers[name] = to_numpy(pc.cast(column, pa.float64()))  # bool -> 0/1; null -> NaN
        return self._numbers[name]

    def texts(self, name: str) -> Any:
        if name not in self._texts:
            import pyarrow as pa

            column = self.file.table.column(name)
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            self._texts[name] = column.cast(pa.string()).combine_chunks()
        return self._texts[name]

    def missing(self, name: str, categorical: bool) -> Any:
        import numpy as np

        if categorical:
            return to_numpy(self.texts(name).is_null())
        return np.isnan(self.numbers(name))


def missing_by_row(raw: Raw, columns: Columns) -> tuple[Any, Any]:
    """(rows missing the target, rows missing any feature) as boolean arrays over the file."""
    import numpy as np

    target = raw.missing(columns.target, columns.task == "classification")
    features = np.zeros(raw.file.table.num_rows, dtype=bool)
    for name in columns.features:
        features |= raw.missing(name, name in columns.categorical)
    return target, features


def report_missing(raw: Raw, columns: Columns, rows: Any, target_only: bool) -> DataContentError:
    """One line: the first few rows with missing cells, each with its columns, and the count."""
    names = [columns.target] + ([] if target_only else columns.features)
    shown = []
    for i in rows[:5]:
        empty = [n for n in names if raw.missing(n, n in columns.as_text)[i]]
        shown.append(f"row {raw.file.row(i)} ({', '.join(empty)})")
    what = f"the target '{columns.target}' is missing" if target_only else "values are missing"
    fix = (
        "set data.missing: drop to leave those rows out (mean fills features only)"
        if target_only
        else "set data.missing: mean (fill from the training rows) or drop (leave the rows out)"
    )
    count = f"{len(rows)} row{'' if len(rows) == 1 else 's'}"
    return DataContentError(f"{raw.file.name}: {what} in {count}: {listing(shown, len(rows))}; {fix}")


def split_rows(rows: Any, labels: Any | None, fraction: float, seed: int) -> Any:
    """The test rows among `rows` (sorted): a seeded draw, stratified by `labels` if given
    (see split.py)."""
    import numpy as np

    from trainkit.builtin.split import stratified_counts

    generator = np.random.default_rng([seed, 0x7AB1E])  # its own stream: nothing else shifts the split
    if labels is None:
        count = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        return np.sort(generator.permutation(rows)[:count])
    codes = labels[rows]
    classes = np.unique(codes)
    counts = stratified_counts(np.array([(codes == c).sum() for c in classes]), fraction)
    picked = [generator.permutation(rows[codes == c])[:k] for c, k in zip(classes, counts, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)


def make_plan(raw: Raw, columns: Columns, rows: Any, max_categories: int) -> Plan:
    """Vocabularies, statistics and classes from the training rows `rows` of `raw`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    file, categories, frequencies, mean, std = raw.file, {}, {}, {}, {}
    for name in columns.features:
        if name in columns.categorical:
            values = raw.texts(name).take(arrow_array(rows)).drop_null()
            counts = pc.value_counts(values)
            order = pc.sort_indices(counts.field("values"))
            vocabulary = counts.field("values").take(order).to_pylist()
            if len(vocabulary) > max_categories:
                raise DataContentError(
                    f"{file.name}: categorical column '{name}' has {len(vocabulary)} distinct values in the "
                    f"training rows; one-hot encoding makes an input of each (data.max_categories: "
                    f"{max_categories}); leave it out of data.features or raise data.max_categories"
                )
            if not vocabulary:
                raise DataContentError(f"{file.name}: column '{name}' is empty in every training row")
            categories[name] = vocabulary
            shares = to_numpy(counts.field("counts").take(order)) / len(values)
            frequencies[name] = [float(s) for s in shares]
        else:
            x = raw.numbers(name)[rows]
            x = x[~np.isnan(x)]
            if not len(x):
                raise DataContentError(f"{file.name}: column '{name}' is empty in every training row")
            mean[name], std[name] = _moments(file, name, x)
    plan = Plan(columns.target, columns.task, list(columns.features), categories, frequencies, mean, std)
    if columns.task == "classification":
        column = file.table.column(columns.target)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        unique = pc.unique(column.take(arrow_array(rows)).drop_null())
        plan.classes = unique.take(pc.sort_indices(unique)).cast("string").to_pylist()
        if len(plan.classes) < 2:
            raise DataContentError(
                f"{file.name}: target '{columns.target}' is {plan.classes[0]!r} in every training row: nothing to learn"
            )
    else:
        y = raw.numbers(columns.target)[rows]
        y = y[~np.isnan(y)]
        if np.all(y == y[0]):
            raise DataContentError(
                f"{file.name}: target '{columns.target}' is {y[0]:g} in every training row: nothing to learn"
            )
        plan.target_mean, plan.target_std = _moments(file, columns.target, y)
    return plan


def _moments(file: TableFile, name: str, x: Any) -> tuple[float, float]:
    """Mean and (population) standard deviation in float64; a constant column gets std 1."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(x.mean()), float(x.std())
    if not (np.isfinite(mean) and np.isfinite(std)):
        biggest = float(np.max(np.abs(x)))
        raise DataContentError(
            f"{file.name}: column '{name}' holds values too large to standardise (up to {biggest:.3g}); "
            "rescale the column"
        )
    return mean, std if std > 0 else 1.0


def check_finite(raw: Raw, columns: Columns) -> None:
    """inf (or a number beyond float64, which CSV readers turn into inf) is an error, not missing."""
    import numpy as np

    numeric = [n for n in columns.features if n not in columns.categorical]
    for name in numeric + ([columns.target] if columns.task == "regression" else []):
        bad = np.flatnonzero(np.isinf(raw.numbers(name)))
        if len(bad):
            raise DataContentError(
                f"{raw.file.name}: column '{name}' is infinite (or beyond float64) in {raw.file.rows(bad)}; "
                "fix those values or leave the cells empty for data.missing"
            )


def encode(raw: Raw, rows: Any, plan: Plan, what: str) -> tuple[Any, Any]:
    """The rows' inputs (float32, rows x inputs) and targets (int64 class indices, or float32
    standardised values of shape (rows, 1)). `what` names the rows in messages."""
    return encode_inputs(raw, rows, plan, what), _targets(raw, rows, plan, what)


def encode_inputs(raw: Raw, rows: Any, plan: Plan, what: str) -> Any:
    """The rows' model inputs (float32, rows x inputs): one-hot categories (a missing cell: the
    training shares; an unknown category: zeros), standardised numbers (a missing cell: 0)."""
    import numpy as np
    import pyarrow.compute as pc

    file = raw.file
    inputs = np.empty((len(rows), len(plan.input_names())), dtype=np.float32)
    at = 0
    for name in plan.features:
        if name in plan.categories:
            vocabulary = plan.categories[name]
            texts = raw.texts(name).take(arrow_array(rows))
            codes = to_numpy(pc.index_in(texts, value_set=arrow_array(vocabulary)))
            block = np.zeros((len(rows), len(vocabulary)), dtype=np.float32)
            known = codes >= 0
            block[np.flatnonzero(known), codes[known]] = 1.0
            empty = to_numpy(texts.is_null())
            block[empty] = np.asarray(plan.frequencies[name], dtype=np.float32)
            unknown = np.flatnonzero(~known & ~empty)
            if len(unknown):
                seen = sorted(pc.unique(texts.take(arrow_array(unknown))).to_pylist())
                log.warning(
                    "%s: column '%s' has categories the training rows lack in %d of the %s (%s): "
                    "encoded as none of the known categories (all zeros)",
                    file.name,
                    name,
                    len(unknown),
                    what,
                    listing([repr(v) for v in seen]),
                )
            inputs[:, at : at + len(vocabulary)] = block
            at += len(vocabulary)
        else:
            x = raw.numbers(name)[rows]
            z = _standardised(x, plan.mean[name], plan.std[name])
            z[np.isnan(x)] = 0.0  # data.missing: mean (other modes left no missing cell here)
            _check_range(file, name, rows, z, x)
            inputs[:, at] = z
            at += 1
    return inputs


def _standardised(x: Any, mean: float, std: float) -> Any:
    """(x - mean) / std as float32; a value beyond float32's range becomes inf, which
    _check_range then reports (numpy's own overflow warning would be a second, vaguer line)."""
    import numpy as np

    with np.errstate(over="ignore"):
        return ((x - mean) / std).astype(np.float32)


def _check_range(file: TableFile, name: str, rows: Any, z: Any, x: Any) -> None:
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(z))
    if len(bad):
        raise DataContentError(
            f"{file.name}: column '{name}' holds values too far from the training rows' to encode as "
            f"float32 ({file.rows(rows[bad])}: {x[bad[0]]:.3g}); rescale the column"
        )


def _targets(raw: Raw, rows: Any, plan: Plan, what: str) -> Any:
    import numpy as np
    import pyarrow.compute as pc

    file = raw.file
    if plan.classes is not None:
        texts = raw.texts(plan.target).take(arrow_array(rows))
        codes = to_numpy(pc.index_in(texts, value_set=arrow_array(plan.classes)))
        unseen = np.flatnonzero(codes < 0)
        if len(unseen):
            values = sorted(pc.unique(texts.take(arrow_array(unseen))).to_pylist())
            raise DataContentError(
                f"{file.name}: target '{plan.target}' has classes the training rows lack in the {what} "
                f"({listing([repr(v) for v in values])} in {file.rows(rows[unseen])}); "
                f"the model can only predict {listing([repr(c) for c in plan.classes])}"
            )
        return codes.astype(np.int64)
    assert plan.target_mean is not None and plan.target_std is not None  # regression plans have both
    y = raw.numbers(plan.target)[rows]
    z = _standardised(y, plan.target_mean, plan.target_std)
    _check_range(file, plan.target, rows, z, y)
    return z.reshape(-1, 1)
