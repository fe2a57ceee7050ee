"""The `table` data set's builder on tables the tests write: columns, task, split, missing
values, encoding, the record, and one exact message for each bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import assert_same_tensors
from helpers_tables import COLORS, rule_columns, without, write_csv, write_parquet
from trainkit.builtin.table import table
from trainkit.errors import ConfigError, DataChangedError, DataContentError

pytest.importorskip("pyarrow")


def _build(path, target="label", **options):
    return table(seed=0, path=str(path), target=target, **options)


def _error(kind, path, target="label", **options) -> str:
    with pytest.raises(kind) as info:
        _build(path, target, **options)
    assert type(info.value).exit_code == 2 and "\n" not in str(info.value)
    return str(info.value).replace(str(path), "FILE")


def _edited(columns, name, edits):
    changed = {k: list(v) for k, v in columns.items()}
    for index, value in edits.items():
        changed[name][index] = value
    return changed


@pytest.fixture
def labelled(tmp_path):
    return write_csv(tmp_path / "train.csv", without(rule_columns(200), "price"))


def test_defaults_features_categories_task_and_a_stratified_split(labelled):
    bundle = _build(labelled)
    info = bundle.info
    assert info.task == "classification" and info.class_names == ["neg", "pos"] and info.num_classes == 2
    assert info.features == ["x0", "x1", "x2", "x3", "color=blue", "color=green", "color=red"]
    assert info.input_shape == (7,) and bundle.train.inputs.dtype == torch.float32
    assert len(bundle.train) == 160 and len(bundle.test) == 40  # test_fraction 0.2 by default
    # the numeric inputs are standardised with the training rows' statistics
    numeric = bundle.train.inputs[:, :4].double()
    assert torch.allclose(numeric.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(numeric.std(0, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-5)
    assert torch.equal(bundle.train.inputs[:, 4:].sum(1), torch.ones(160))  # one-hot: one category per row
    # stratified: each class has its share of the test rows
    labels = np.array(rule_columns(200)["label"])
    test_rows = bundle.record["test_rows"].numpy()
    for name in ("neg", "pos"):
        assert abs((labels[test_rows] == name).sum() - 0.2 * (labels == name).sum()) < 1
    assert bundle.test.targets.tolist() == [0 if v == "neg" else 1 for v in labels[test_rows]]


def test_the_split_is_seeded_and_rebuilt_from_the_record(labelled):
    a, b, c = _build(labelled), _build(labelled), table(seed=1, path=str(labelled), target="label")
    assert torch.equal(a.record["test_rows"], b.record["test_rows"])
    assert not torch.equal(a.record["test_rows"], c.record["test_rows"])
    again = table(seed=7, path=str(labelled), target="label", record=a.record)  # the record wins
    assert_same_tensors(
        [a.train.inputs, a.train.targets, a.test.inputs, a.test.targets],
        [again.train.inputs, again.train.targets, again.test.inputs, again.test.targets],
    )
    assert again.record["plan"] == a.record["plan"] and again.info == a.info


@pytest.mark.parametrize(
    "values,task,classes",
    [
        (["3", "1", "2", "10"] * 10, "classification", ["1", "2", "3", "10"]),  # few integers, in number order
        (["true", "false"] * 20, "classification", ["false", "true"]),
        ([str(i) for i in range(40)], "regression", None),  # many integers
        ([f"{i}.5" for i in range(4)] * 10, "regression", None),  # floats
    ],
)
def test_the_task_is_inferred_from_the_target(tmp_path, values, task, classes):
    path = write_csv(tmp_path / "t.csv", {"x": [float(i) for i in range(40)], "y": values})
    info = _build(path, "y").info
    assert info.task == task and info.class_names == classes


def test_text_columns_are_categorical_unless_listed_otherwise(tmp_path):
    columns = {
        "x": [float(i % 7) for i in range(30)],
        "zip": [75000 + i % 3 for i in range(30)],
        "y": [i % 2 for i in range(30)],
    }
    path = write_csv(tmp_path / "t.csv", columns)
    assert _build(path, "y").info.features == ["x", "zip"]
    info = _build(path, "y", categorical=["zip"]).info  # numbers may be categories too
    assert info.features == ["x", "zip=75000", "zip=75001", "zip=75002"]
    assert _build(path, "y", features=["zip"]).info.features == ["zip"]


def test_an_unnamed_first_column_is_taken_for_a_pandas_index(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text(",x,y\n" + "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(20)))
    with caplog.at_level(logging.INFO, logger="trainkit"):
        assert _build(path, "y").info.features == ["x"]
    assert f"{path}: column 1 has no name (an index pandas wrote?): not a feature" in caplog.messages


def test_missing_values_error_lists_rows_mean_fills_drop_leaves_out(tmp_path):
    columns = _edited(without(rule_columns(40), "price"), "x1", {3: "", 5: "NA"})
    columns = _edited(columns, "color", {5: "", 8: "null"})
    path = write_csv(tmp_path / "t.csv", columns)
    assert _error(DataContentError, path) == (
        "FILE: values are missing in 3 rows: row 5 (x1), row 7 (x1, color), row 10 (color); "
        "set data.missing: mean (fill from the training rows) or drop (leave the rows out)"
    )
    dropped = _build(path, missing="drop")
    assert len(dropped.train) + len(dropped.test) == 37
    filled = _build(path, missing="mean")
    plan = filled.record["plan"]
    rows = np.concatenate([np.setdiff1d(np.arange(40), filled.record["test_rows"]), filled.record["test_rows"]])
    inputs = torch.cat([filled.train.inputs, filled.test.inputs])
    for row in (3, 5):  # a missing number is the training mean: 0 once standardised
        assert inputs[np.flatnonzero(rows == row)[0], 1] == 0
    for row in (5, 8):  # a missing category is the training frequencies of the categories
        assert torch.allclose(inputs[np.flatnonzero(rows == row)[0], 4:], torch.tensor(plan["frequencies"]["color"]))


def test_a_missing_target_is_dropped_or_an_error(tmp_path):
    path = write_csv(tmp_path / "t.csv", _edited(without(rule_columns(40), "price"), "label", {0: ""}))
    assert _error(DataContentError, path, missing="mean") == (
        "FILE: the target 'label' is missing in 1 row: row 2 (label); "
        "set data.missing: drop to leave those rows out (mean fills features only)"
    )
    assert len(_build(path, missing="drop").train) == 31


def test_dropping_every_row_names_the_empty_columns(tmp_path):
    columns = without(rule_columns(40), "price")
    columns["x1"] = [""] * 40
    columns["color"] = ["" if i % 4 else "red" for i in range(40)]
    path = write_csv(tmp_path / "t.csv", columns)
    assert _error(DataContentError, path, missing="drop") == (
        "FILE: data.missing: drop leaves no rows: every row misses a value (x1 in 40 of 40, color in 30 of 40); "
        "leave such columns out of data.features, or set data.missing: mean"
    )
    assert len(_build(path, missing="drop", features=["x0", "x2"]).train) == 32
    columns["label"] = [""] * 40
    path = write_csv(tmp_path / "t.csv", columns)
    assert _error(DataContentError, path, missing="drop") == "FILE: the target 'label' is empty in every row"


def test_unknown_categories_in_the_test_rows_are_zeros_and_said(tmp_path, caplog):
    columns = without(rule_columns(60), "price")
    train = write_csv(tmp_path / "train.csv", columns)
    test = write_csv(tmp_path / "test.csv", _edited(columns, "color", {0: "violet", 1: "violet", 2: "teal"}))
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        bundle = _build(train, test_path=str(test))
    assert caplog.messages == [
        f"{test}: column 'color' has categories the training rows lack in 3 of the test rows ('teal', 'violet'): "
        "encoded as none of the known categories (all zeros)"
    ]
    assert bundle.test.inputs[:3, 4:].abs().sum() == 0 and bundle.test.inputs[3:, 4:].sum() == 57
    assert len(bundle.train) == 60 and len(bundle.test) == 60


def test_parquet_nan_is_missing_and_dictionary_columns_are_categories(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = rule_columns(30)
    columns["x0"][4] = float("nan")
    data = pa.table({**without(columns, "color"), "color": pa.array(columns["color"]).dictionary_encode()})
    pq.write_table(data, tmp_path / "t.parquet")
    assert _error(DataContentError, tmp_path / "t.parquet", "price").startswith(
        "FILE: values are missing in 1 row: row 5 (x0); "
    )
    bundle = _build(tmp_path / "t.parquet", "price", missing="drop")
    assert bundle.info.task == "regression" and bundle.info.features[-3:] == [f"color={c}" for c in COLORS]


def test_bad_content_gets_one_line_and_exit_2(tmp_path, labelled):
    columns = without(rule_columns(40), "price")

    def write(name, data):
        return write_csv(tmp_path / name, data)

    assert _error(ConfigError, labelled, "lable") == (
        "data.target: no column 'lable' in FILE; did you mean 'label'? (columns: 'x0', 'x1', 'x2', 'x3', "
        "'color' and 1 more)"
    )
    assert _error(ConfigError, labelled, features=["x0", "x9"]) == (
        "data.features: no column 'x9' in FILE (columns: 'x0', 'x1', 'x2', 'x3', 'color' and 1 more)"
    )
    assert _error(ConfigError, labelled, features=["x0", "label"]) == (
        "data.features: lists the target 'label'; a model cannot take its own answer"
    )
    assert _error(DataContentError, labelled, categorical=["x0"]) == (
        "FILE: feature 'color' holds text, not numbers; list it in data.categorical or leave it out of data.features"
    )
    typo = write("typo.csv", _edited(columns, "x1", {5: "12a", 9: "n.a."}))
    assert _error(DataContentError, typo) == (
        "FILE: column 'x1' holds numbers except in 2 rows (row 7: '12a', row 11: 'n.a.'); fix those values "
        "(or leave them empty for data.missing), or list 'x1' in data.categorical to use it as categories"
    )
    assert _error(DataContentError, write("const.csv", {**columns, "label": ["a"] * 40})) == (
        "FILE: target 'label' is 'a' in every training row: nothing to learn"
    )
    assert _error(DataContentError, write("const2.csv", {**columns, "label": [2.5] * 40}), task="regression") == (
        "FILE: target 'label' is 2.5 in every training row: nothing to learn"
    )
    assert _error(DataContentError, labelled, task="regression") == (
        "FILE: target 'label' holds text; regression needs numbers (or set data.task: classification)"
    )
    inf = write("inf.csv", _edited(columns, "x2", {3: "1e400", 4: "-inf"}))
    assert _error(DataContentError, inf) == (
        "FILE: column 'x2' is infinite (or beyond float64) in rows 5, 6; fix those values or leave the cells "
        "empty for data.missing"
    )
    huge = write("huge.csv", _edited(columns, "x2", {3: "1e300"}))
    assert _error(DataContentError, huge) == (
        "FILE: column 'x2' holds values too large to standardise (up to 1e+300); rescale the column"
    )
    dates = write("dates.csv", {**columns, "day": [f"2024-01-{1 + i % 28:02d}" for i in range(40)]})
    assert _error(DataContentError, dates) == (
        "FILE: feature 'day' holds dates or times, not numbers; list it in data.categorical or leave it out of "
        "data.features"
    )
    ids = write("ids.csv", {**columns, "user": [f"u{i}" for i in range(40)]})
    assert _error(DataContentError, ids, max_categories=20) == (
        "FILE: categorical column 'user' has 32 distinct values in the training rows; one-hot encoding makes an "
        "input of each (data.max_categories: 20); leave it out of data.features or raise data.max_categories"
    )
    assert _error(ConfigError, labelled, test_path=str(labelled), test_fraction=0.1) == (
        "data.test_fraction: give data.test_path or data.test_fraction, not both"
    )


def test_a_test_file_must_match_the_training_file(tmp_path, labelled):
    columns = without(rule_columns(40), "price")

    def error(data, name="test.csv"):
        test = write_csv(tmp_path / name, data)
        return _error(DataContentError, labelled, test_path=str(test)).replace(str(test), "TEST")

    assert (
        error(without(columns, "x3"))
        == "TEST: has other columns than FILE: it lacks 'x3'; both files need the same columns"
    )
    assert error({**columns, "extra": [1] * 40}) == (
        "TEST: has other columns than FILE: it has 'extra' too; both files need the same columns"
    )
    assert error(_edited(columns, "label", {0: "maybe", 5: "maybe"})) == (
        "TEST: target 'label' has classes the training rows lack in the test rows ('maybe' in rows 2, 7); "
        "the model can only predict 'neg', 'pos'"
    )
    assert error({**columns, "x2": [f"v{i}" for i in range(40)]}) == "TEST: column 'x2' holds text, but number in FILE"


def test_a_changed_file_is_refused_saying_what_changed(tmp_path):
    columns = without(rule_columns(40), "price")
    path = write_csv(tmp_path / "t.csv", columns)
    record = _build(path).record

    def error():
        with pytest.raises(DataChangedError) as info:
            _build(path, record=record)
        assert type(info.value).exit_code == 2
        return str(info.value).replace(str(path), "FILE")

    tail = "; resuming or evaluating on it would not be the same run: put the original file back, or train a new run"
    before = path.stat().st_size
    write_csv(path, _edited(columns, "x0", {3: 1.25}))
    assert error() == (
        f"data.path: FILE changed since the run read it: same rows and columns, other values "
        f"({before} bytes before, {path.stat().st_size} now){tail}"
    )
    write_csv(path, {k: v[:38] for k, v in {**columns, "new": [1] * 40}.items()})
    assert error() == f"data.path: FILE changed since the run read it: 40 rows before, 38 now; column 'new' added{tail}"
    write_csv(path, columns)  # the same bytes again: accepted
    assert _build(path, record=record).record["files"] == record["files"]
    write_parquet(tmp_path / "copy.parquet", columns)  # another path with other bytes: refused too
    with pytest.raises(DataChangedError):
        _build(tmp_path / "copy.parquet", record=record)


def test_a_split_that_draws_no_test_row_says_why(tmp_path):
    path = write_csv(tmp_path / "t.csv", {"x": [float(i) for i in range(12)], "y": [str(i) for i in range(12)]})
    assert _error(DataContentError, path, "y", task="classification") == (
        "FILE: test_fraction 0.2 draws no test rows: a stratified split needs classes of 2 rows or more "
        "(or give data.test_path)"
    )


def test_decimal_commas_are_named_and_read_when_set(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x;y\n" + "".join(f"{i},5;{i % 2}\n" for i in range(20)))
    assert _error(DataContentError, path, "y") == (
        "FILE: column 'x' holds numbers with a decimal comma ('0,5'); set data.decimal: ',' "
        "(or list it in data.categorical to use it as categories)"
    )
    assert _build(path, "y", decimal=",").info.features == ["x"]


def test_the_split_kind_cannot_change_on_resume_or_eval(tmp_path, labelled):
    record = _build(labelled).record
    other = write_csv(tmp_path / "other.csv", without(rule_columns(30), "price"))
    assert _error(ConfigError, labelled, test_path=str(other), record=record) == (
        "data.test_path: the run took its test rows from data.path (test_fraction); leave it out"
    )
    record = _build(labelled, test_path=str(other)).record
    assert _error(ConfigError, labelled, record=record) == (
        "data.test_path: the run took its test rows from a test file; give it (data.test_path=...)"
    )
