"""`data: {name: table, path: train.csv, target: COLUMN, ...}`: a user's own CSV or Parquet table.

The steps, each in its own module: read the file(s) (`table_read`: format, delimiter,
one-line errors, fingerprints), choose the columns (`table_columns`: target, features,
which are categorical, the task), then split, plan and encode the rows (`table_encode`).
The whole table ends up as two in-memory `TensorSplit`s of float32 inputs, the fast path
the built-in data sets take.

What the run needs to see the same table again is its data record, saved in every
checkpoint: the files' fingerprints (resume and eval refuse a changed file), the test rows
drawn by `test_fraction`, and the plan (vocabularies, statistics, classes), which eval and
resume apply as recorded rather than recompute.
"""

from __future__ import annotations

import codecs
import logging
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from trainkit.registry import DATASETS

log = logging.getLogger("trainkit")
DEFAULT_TEST_FRACTION = 0.2
RECORD_FORMAT = 1


def _encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError("should be a text encoding Python knows, e.g. utf8 or latin-1") from None
    return value


Fraction = Annotated[float, Field(gt=0, lt=1)]
Delimiter = Annotated[str, Field(min_length=1, max_length=1)]
Encoding = Annotated[str, AfterValidator(_encoding)]


@DATASETS.register("table", requires={"pyarrow": "tables"})
def table(
    seed: int,
    path: str,
    target: str,
    record: dict | None = None,
    test_path: str | None = None,
    test_fraction: Fraction | None = None,
    task: Literal["classification", "regression"] | None = None,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
    missing: Literal["error", "mean", "drop"] = "error",
    max_categories: Annotated[int, Field(gt=0)] = 256,
    delimiter: Delimiter | None = None,
    encoding: Encoding = "utf8",
    decimal: Literal[".", ","] = ".",
):
    """Your own CSV or Parquet table: one target column, numeric and categorical features."""
    from trainkit.builtin.table_columns import check_same_columns, choose_columns
    from trainkit.builtin.table_encode import Plan, Raw, check_finite, make_plan
    from trainkit.builtin.table_read import TableFile, read_table
    from trainkit.errors import ConfigError

    if test_path is not None and test_fraction is not None:
        raise ConfigError("data.test_fraction: give data.test_path or data.test_fraction, not both")

    def read(key: str, value: str) -> TableFile:
        return read_table(
            key, value, delimiter=delimiter, encoding=encoding, decimal=decimal, resuming=record is not None
        )

    files = [read("data.path", path)] + ([read("data.test_path", test_path)] if test_path else [])
    if record is not None:
        _check_record(record, files)
    columns = choose_columns(files[0], target, features, categorical, task, decimal)
    if len(files) == 2:
        check_same_columns(files[0], files[1], columns, decimal)
    raws = [Raw(f) for f in files]
    usable = [_usable_rows(raw, columns, missing) for raw in raws]
    for raw in raws:
        check_finite(raw, columns)
    fraction = test_fraction or DEFAULT_TEST_FRACTION
    train_rows, test_rows, drawn = _split(raws, usable, columns, record, fraction, seed)
    if record is not None:
        plan = Plan.from_record(record["plan"])
    else:
        plan = make_plan(raws[0], columns, train_rows, max_categories)
    bundle = _bundle(plan, raws[0], train_rows, raws[-1], test_rows)
    bundle.record = {
        "format": RECORD_FORMAT,
        "files": {f.key: f.fingerprint for f in files},
        "test_rows": drawn,
        "plan": plan.to_record(),
    }
    if record is None:
        _describe(files, plan, len(train_rows), len(test_rows), drawn is not None, fraction)
    return bundle


def _check_record(record: dict[str, Any], files: list[Any]) -> None:
    """A record this code reads, the same kind of split, and the same bytes in every file."""
    from trainkit.errors import CheckpointError, ConfigError

    if record.get("format") != RECORD_FORMAT or "plan" not in record:
        raise CheckpointError("the checkpoint's data record is not a table record trainkit reads")
    # The run's split is part of the run: its test rows came from a test file or from data.path.
    had_file = "data.test_path" in record.get("files", {})
    if had_file != (len(files) == 2):
        where = "a test file; give it (data.test_path=...)" if had_file else "data.path (test_fraction); leave it out"
        raise ConfigError(f"data.test_path: the run took its test rows from {where}")
    check_unchanged(record, files)


def _split(
    raws: list[Any], usable: list[Any], columns: Any, record: dict[str, Any] | None, fraction: float, seed: int
) -> tuple[Any, Any, Any]:
    """(training rows, test rows, the drawn test rows as a tensor for the record or None)."""
    import numpy as np
    import torch

    from trainkit.builtin.table_encode import split_rows
    from trainkit.errors import DataContentError

    if len(raws) == 2:
        train_rows, test_rows, drawn = usable[0], usable[1], None
    else:
        file = raws[0].file
        if record is not None:
            drawn = record["test_rows"]
        else:
            has_target = _rows_with_target(raws[0], columns)
            if len(has_target) < 2:
                raise DataContentError(f"{file.name}: {len(has_target)} row with a target: too few to split")
            labels = _class_codes(raws[0], columns) if columns.task == "classification" else None
            drawn = torch.from_numpy(np.asarray(split_rows(has_target, labels, fraction, seed), dtype=np.int64))
            if not len(drawn):
                raise DataContentError(
                    f"{file.name}: test_fraction {fraction:g} draws no test rows: a stratified split needs "
                    "classes of 2 rows or more (or give data.test_path)"
                )
        is_test = np.zeros(file.table.num_rows, dtype=bool)
        is_test[drawn.numpy()] = True
        chosen = np.zeros_like(is_test)
        chosen[usable[0]] = True
        train_rows, test_rows = np.flatnonzero(chosen & ~is_test), np.flatnonzero(chosen & is_test)
    for rows, raw, what in ((train_rows, raws[0], "training"), (test_rows, raws[-1], "test")):
        if not len(rows):
            raise DataContentError(f"{raw.file.name}: no {what} rows left")
    return train_rows, test_rows, drawn


def _bundle(plan: Any, train_raw: Any, train_rows: Any, test_raw: Any, test_rows: Any) -> Any:
    """The encoded rows as in-memory TensorSplits, and the DatasetInfo models and export read."""
    import torch

    from trainkit.builtin.table_encode import encode
    from trainkit.training.data import DataBundle, DatasetInfo, TensorSplit

    splits = []
    for raw, rows, what in ((train_raw, train_rows, "training rows"), (test_raw, test_rows, "test rows")):
        inputs, targets = encode(raw, rows, plan, what)
        splits.append(TensorSplit(torch.from_numpy(inputs), torch.from_numpy(targets)))
    names = plan.input_names()
    mean, std = plan.input_scale()
    classification = plan.classes is not None
    info = DatasetInfo(
        plan.task,
        (len(names),),
        num_classes=len(plan.classes) if classification else None,
        class_names=list(plan.classes) if classification else None,
        features=names,
        feature_mean=tuple(mean),
        feature_std=tuple(std),
        target_mean=None if plan.target_mean is None else (plan.target_mean,),
        target_std=None if plan.target_std is None else (plan.target_std,),
    )
    return DataBundle(info, splits[0], splits[1])


def _usable_rows(raw: Any, columns: Any, missing: str) -> Any:
    """The file's rows to use under data.missing; error lists the rows with missing cells."""
    import numpy as np

    from trainkit.builtin.table_encode import missing_by_row, report_missing

    no_target, no_feature = missing_by_row(raw, columns)
    if no_target.any() and missing != "drop":
        raise report_missing(raw, columns, np.flatnonzero(no_target), target_only=True)
    if no_feature.any() and missing == "error":
        raise report_missing(raw, columns, np.flatnonzero(no_feature), target_only=False)
    dropped = np.flatnonzero(no_target | (no_feature if missing == "drop" else False))
    if len(dropped) == raw.file.table.num_rows:
        raise _nothing_left(raw, columns)
    if len(dropped):
        log.info("%s: left out %d rows with missing values (%s)", raw.file.name, len(dropped), raw.file.rows(dropped))
    return np.flatnonzero(~(no_target | (no_feature if missing == "drop" else False)))


def _nothing_left(raw: Any, columns: Any) -> Exception:
    """data.missing: drop left no row: name the columns that are empty in most rows."""
    from trainkit.builtin.table_read import listing
    from trainkit.errors import DataContentError

    counts = {n: int(raw.missing(n, n in columns.as_text).sum()) for n in [columns.target, *columns.features]}
    worst = sorted((n for n in counts if counts[n]), key=lambda n: -counts[n])
    total = raw.file.table.num_rows
    if counts[columns.target] == total:
        return DataContentError(f"{raw.file.name}: the target '{columns.target}' is empty in every row")
    return DataContentError(
        f"{raw.file.name}: data.missing: drop leaves no rows: every row misses a value "
        f"({listing([f'{n} in {counts[n]} of {total}' for n in worst], len(worst))}); "
        "leave such columns out of data.features, or set data.missing: mean"
    )


def _rows_with_target(raw: Any, columns: Any) -> Any:
    import numpy as np

    from trainkit.builtin.table_encode import missing_by_row

    return np.flatnonzero(~missing_by_row(raw, columns)[0])


def _class_codes(raw: Any, columns: Any) -> Any:
    """An integer per row naming its class (for stratifying the split); -1 where missing."""
    import pyarrow.compute as pc

    from trainkit.builtin.table_read import to_numpy

    codes = pc.dictionary_encode(raw.texts(columns.target)).indices
    return to_numpy(codes)


def check_unchanged(record: dict[str, Any], files: list[Any]) -> None:
    """Refuse (exit 2) a table that differs from the one the run was trained on, saying how."""
    from trainkit.builtin.table_read import listing
    from trainkit.errors import DataChangedError

    saved = record.get("files", {})
    for file in files:
        old = saved.get(file.key)
        new = file.fingerprint
        if old is None or old.get("sha256") == new["sha256"]:
            continue
        changes = []
        if old.get("rows") != new["rows"]:
            changes.append(f"{old.get('rows')} rows before, {new['rows']} now")
        gone = [c for c in old.get("columns", []) if c not in new["columns"]]
        added = [c for c in new["columns"] if c not in old.get("columns", [])]
        if gone:
            changes.append(f"column{'s' if len(gone) > 1 else ''} {listing([repr(c) for c in gone])} gone")
        if added:
            changes.append(f"column{'s' if len(added) > 1 else ''} {listing([repr(c) for c in added])} added")
        if not changes:
            changes.append(f"same rows and columns, other values ({old.get('bytes')} bytes before, {new['bytes']} now)")
        raise DataChangedError(
            f"{file.key}: {file.name} changed since the run read it: {'; '.join(changes)}; resuming or "
            "evaluating on it would not be the same run: put the original file back, or train a new run"
        )


def _describe(files: list[Any], plan: Any, n_train: int, n_test: int, drawn: bool, fraction: float) -> None:
    """One line on what was read and how it is used (fresh runs only; resume and eval are quiet)."""
    first = files[0]
    how = f"CSV, delimiter {first.delimiter!r}" if first.format == "csv" else "Parquet"
    split = (
        f"test_fraction {fraction:g}" + (", stratified" if plan.classes is not None else "") if drawn else "test_path"
    )
    onehot = sum(len(v) for v in plan.categories.values())
    inputs = f"{len(plan.features) - len(plan.categories)} numeric"
    if plan.categories:
        inputs += f" + {onehot} one-hot from {len(plan.categories)} categorical"
    target = f"{len(plan.classes)} classes" if plan.classes is not None else "regression"
    log.info(
        f"{first.name}: {first.table.num_rows} rows x {first.table.num_columns} columns ({how}); "
        f"{n_train} training / {n_test} test rows ({split}); inputs: {inputs}; target '{plan.target}': {target}"
    )
