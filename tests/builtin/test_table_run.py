"""Training on tables end to end: known rules learned, exact mid-epoch resume, the recorded
split reused by eval, a changed table refused, the missing extra named, export in the
target's units."""

from __future__ import annotations

import json

import pytest
import torch

import trainkit
from conftest import assert_same_tensors, load_ckpt, metric_history, write_config
from helpers_tables import COEFFICIENTS, COLORS, GREEN, INTERCEPT, rule_columns, table_config, without, write_csv
from trainkit.errors import TrainingInterrupted
from trainkit.training.session import Session

pytest.importorskip("pyarrow")


def _run_dir(tmp_path, name="table"):
    return tmp_path / "ckpt" / name


def test_a_linear_class_rule_is_learned(tmp_path):
    path = write_csv(tmp_path / "train.csv", without(rule_columns(800), "price"), delimiter=";")
    config = table_config(tmp_path, path, "label")
    config["trainer"]["epochs"] = 8
    result = trainkit.train(config, quiet=True)
    assert result["final"]["val_accuracy"] >= 0.95  # the rule is linear in x0, x1, x2 and color
    assert trainkit.evaluate(result["run_dir"])["samples"] == 160


def _price_line(tmp_path):
    """linear_regression of rule_columns' price, trained until it holds the coefficients."""
    path = write_csv(tmp_path / "train.csv", without(rule_columns(400), "label"))
    config = table_config(tmp_path, path, "price", name="line")
    config["model"] = {"name": "linear_regression"}
    config["optimizer"] = {"name": "sgd", "lr": 0.1}
    config["trainer"]["epochs"] = 25
    return trainkit.train(config, quiet=True)


def test_known_coefficients_are_recovered_with_linear_regression(tmp_path):
    result = _price_line(tmp_path)
    metrics = trainkit.evaluate(result["best_checkpoint"])
    assert metrics["r2"] > 0.99999 and metrics["mae"] < 0.01  # in the price's own units
    assert metrics["loss"] < metrics["mse"]  # the loss is in standardised units, the price's spread is > 1

    # The exported file takes raw features (standardisation inside) and answers in price units,
    # so its slopes are the coefficients the table was written with.
    from trainkit.tools.export import export, load_exported

    export(result["best_checkpoint"], tmp_path / "line.pt2")
    model = load_exported(tmp_path / "line.pt2", "export")
    names = ["x0", "x1", "x2", "x3"] + [f"color={c}" for c in COLORS]

    def at(**values):
        return model(torch.tensor([[values.get(n, 0.0) for n in names]])).item()

    blue = at(**{"color=blue": 1.0})
    assert blue == pytest.approx(INTERCEPT, abs=0.02)
    assert at(**{"color=green": 1.0}) - blue == pytest.approx(GREEN, abs=0.02)
    assert at(**{"color=red": 1.0}) - blue == pytest.approx(0.0, abs=0.02)
    for name, coefficient in COEFFICIENTS.items():
        assert at(**{name: 1.0, "color=blue": 1.0}) - blue == pytest.approx(coefficient, abs=0.01), name
    with open(tmp_path / "line.pt2", "rb") as f:
        assert b'"input_columns": ["x0", "x1", "x2", "x3", "color=blue"' in f.read()


@pytest.mark.parametrize("target", ["label", "price"])
def test_interrupted_mid_epoch_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, target):
    columns = without(rule_columns(200), "price" if target == "label" else "label")
    columns["x1"][7] = None  # a missing cell, filled from the recorded training mean
    path = write_csv(tmp_path / "train.csv", {k: ["" if v is None else v for v in vs] for k, vs in columns.items()})

    def config(name):
        c = table_config(tmp_path, path, target, name=name, missing="mean")
        c["model"]["dropout"] = 0.3
        return c

    trainkit.train(config("ref"), quiet=True)  # 160 training rows / 32 = 5 steps per epoch
    with monkeypatch.context() as patch, pytest.raises(TrainingInterrupted):
        patch.setattr(Session, "stop_requested", lambda self, state: state.step == 7)
        trainkit.train(config("run"), quiet=True)
    trainkit.resume(_run_dir(tmp_path, "run"), quiet=True)
    a, b = load_ckpt(_run_dir(tmp_path, "run") / "last.pt"), load_ckpt(_run_dir(tmp_path, "ref") / "last.pt")
    for key in ("model", "optimizer", "state", "rng", "data_record", "data_info"):
        assert_same_tensors(a[key], b[key], key)
    assert metric_history(_run_dir(tmp_path, "run")) == metric_history(_run_dir(tmp_path, "ref"))


def test_eval_reuses_the_recorded_split_and_regression_records_carry_r2(tmp_path, monkeypatch, cli):
    path = write_csv(tmp_path / "train.csv", without(rule_columns(300), "label"))
    result = trainkit.train(table_config(tmp_path, path, "price"), quiet=True)
    best = result["history"][result["best_epoch"] - 1]
    assert {"val_loss", "val_mse", "val_mae", "val_r2"} <= set(best)

    import trainkit.builtin.table_encode as encode

    def no_new_split(*args, **kwargs):
        raise AssertionError("eval must take the split from the checkpoint's record")

    monkeypatch.setattr(encode, "split_rows", no_new_split)
    code, out, err = cli("eval", "--ckpt", result["run_dir"], "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["samples"] == 60
    for key in ("loss", "mse", "mae", "r2"):
        assert metrics[key] == pytest.approx(best[f"val_{key}"], rel=1e-6), key
    record = load_ckpt(result["best_checkpoint"])["data_record"]
    assert len(record["test_rows"]) == 60 and record["plan"]["target_std"] > 1
    assert trainkit.evaluate(result["run_dir"], split="train")["samples"] == 240


def test_a_changed_table_stops_resume_and_eval_and_a_moved_one_is_found(tmp_path, cli):
    columns = without(rule_columns(120), "price")
    path = write_csv(tmp_path / "train.csv", columns)
    config = table_config(tmp_path, path, "label")
    config["trainer"]["epochs"] = 1
    run = trainkit.train(config, quiet=True)["run_dir"]
    moved = tmp_path / "moved.csv"
    path.rename(moved)
    code, _, err = cli("eval", "--ckpt", run)
    assert code == 2 and err.startswith(f"error: data.path: file not found: {path} (if it moved, give its new place")
    code, out, err = cli("eval", "--ckpt", run, f"data.path={moved}")
    assert code == 0 and out.startswith("test: samples 24"), err
    columns["x0"][0] = 123.0
    write_csv(path, columns)
    for command in (("resume", run, "trainer.epochs=2"), ("eval", "--ckpt", run)):
        code, _, err = cli(*command)
        assert code == 2
        assert err == (
            f"error: data.path: {path} changed since the run read it: same rows and columns, other values "
            f"({moved.stat().st_size} bytes before, {path.stat().st_size} now); resuming or evaluating on it "
            "would not be the same run: put the original file back, or train a new run\n"
        )


def test_asking_for_a_table_without_pyarrow_names_the_extra(tmp_path, cli, monkeypatch):
    from trainkit import plugins

    path = write_csv(tmp_path / "train.csv", without(rule_columns(20), "price"))
    config = write_config(tmp_path / "t.yaml", table_config(tmp_path, path, "label"))
    monkeypatch.setattr(plugins, "has_module", lambda name: name != "pyarrow")
    code, _, err = cli("validate", config)
    assert code == 2
    assert (
        err == f"error: {config}: line 8: data.name: dataset 'table' needs the pyarrow package: "
        "pip install 'trainkit[tables]'\n"
    )


@pytest.mark.parametrize(
    "content,code,message",
    [
        (b"", 1, "FILE: the file is empty (no header, no rows)"),
        (b"a,b,label\n1,2,x\n3,4\n", 1, "FILE: row 3 (2 fields) does not have the header's 3 fields"),
        (b"a,b,lab\n1,2,x\n3,4,y\n", 2, "data.target: no column 'label' in FILE; did you mean 'lab'?"),
        (b"a,b,label\n1,,x\n3,4,y\n", 2, "FILE: values are missing in 1 row: row 2 (b); set data.missing"),
    ],
)
def test_bad_tables_on_the_command_line_write_nothing(tmp_path, cli, content, code, message):
    path = tmp_path / "train.csv"
    path.write_bytes(content)
    config = write_config(tmp_path / "t.yaml", table_config(tmp_path, path, "label"))
    exit_code, _, err = cli("train", config)
    assert exit_code == code
    assert err.startswith("error: " + message.replace("FILE", str(path))) and err.count("\n") == 1
    assert not (tmp_path / "ckpt").exists()


def test_the_shipped_example_trains_on_the_table_its_documented_command_writes(tmp_path, monkeypatch, caplog):
    import importlib.util
    import logging

    from conftest import REPO

    config = REPO / "configs" / "table_example.yaml"
    command = "python bench/table.py --write data/table.csv --rows 10000"
    assert command in config.read_text().splitlines()[1] and command in (REPO / "README.md").read_text()
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_table", REPO / "bench" / "table.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.chdir(tmp_path)
    bench.write_table(tmp_path / "data" / "table.csv", 2000)  # the command, with fewer rows
    overrides = ["trainer.epochs=2", "trainer.device=cpu", f"checkpoint.dir={tmp_path / 'ckpt'}"]
    with caplog.at_level(logging.INFO, logger="trainkit"):
        result = trainkit.train(config, overrides, quiet=True)
    assert result["final"]["val_accuracy"] > 0.85
    assert (
        "data/table.csv: 2000 rows x 50 columns (CSV, delimiter ','); 1600 training / 400 test rows "
        "(test_fraction 0.2, stratified); inputs: 48 numeric + 5 one-hot from 1 categorical; target 'label': 2 classes"
    ) in caplog.messages


def test_an_exported_classifier_takes_the_raw_rows(tmp_path, cli):
    """export builds the standardisation in: raw numbers and one-hot categories in, the same
    logits as the checkpoint's model on the rows as training encoded them."""
    import numpy as np

    from trainkit.builtin.table import table
    from trainkit.tools.export import load_exported
    from trainkit.training.restore import load_trained_model

    columns = without(rule_columns(150), "price")
    path = write_csv(tmp_path / "train.csv", columns)
    config = table_config(tmp_path, path, "label")
    config["trainer"]["epochs"] = 1
    run = trainkit.train(config, quiet=True)["run_dir"]
    code, out, err = cli("export", "--ckpt", run, "-o", tmp_path / "model.pt2")
    assert code == 0, err
    assert "input raw feature values in the order of trainkit.json's input_columns" in out

    record = load_ckpt(_run_dir(tmp_path) / "best.pt")["data_record"]
    rows = record["test_rows"].numpy()
    raw = np.array([columns[f"x{i}"] for i in range(4)]).T[rows]
    onehot = np.array([[c == name for name in COLORS] for c in np.array(columns["color"])[rows]])
    exported = load_exported(tmp_path / "model.pt2", "export")(
        torch.tensor(np.hstack([raw, onehot]), dtype=torch.float32)
    )
    model, info, _, _ = load_trained_model(run)
    encoded = table(seed=0, path=str(path), target="label", record=record).test.inputs
    assert torch.allclose(exported, model(encoded), atol=1e-5)
    assert info.features == ["x0", "x1", "x2", "x3"] + [f"color={c}" for c in COLORS]


@pytest.fixture(scope="module")
def label_run(tmp_path_factory):
    """A classifier of rule_columns' label, trained with data.missing: mean."""
    base = tmp_path_factory.mktemp("predict_rows")
    path = write_csv(base / "train.csv", without(rule_columns(800), "price"))
    config = table_config(base, path, "label", missing="mean")
    config["trainer"]["epochs"] = 8
    return trainkit.train(config, quiet=True), path


def test_predict_gives_every_row_of_a_new_file_its_classes(label_run, tmp_path, cli):
    """New rows (no label, columns in another order, one extra column) are encoded as the
    training rows were: the rule is predicted, and a row equals what eval's model sees."""
    import numpy as np

    from trainkit.builtin.table import table
    from trainkit.training.restore import load_trained_model

    result, train_path = label_run
    fresh = rule_columns(200, seed=7)
    labels = fresh.pop("label")
    reordered = {"note": ["x"] * 200, **{k: fresh[k] for k in reversed(list(fresh)) if k != "price"}}
    reordered["x1"][3] = None  # a missing number: filled with the training mean (data.missing: mean)
    path = write_csv(tmp_path / "new.csv", reordered)
    code, out, err = cli("predict", result["run_dir"], path, "--json", "-k", "1")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["row"] for r in rows] == list(range(2, 202)) and {r["file"] for r in rows} == {str(path)}
    guessed = [r["predictions"][0]["class"] for r in rows]
    assert np.mean([g == t for g, t in zip(guessed, labels, strict=True)]) >= 0.93

    # the training file's own test rows: predict's probabilities are the model's on eval's inputs
    code, out, _ = cli("predict", result["best_checkpoint"], train_path, "--json", "-k", "2")
    assert code == 0
    record = load_ckpt(result["best_checkpoint"])["data_record"]
    test_rows = record["test_rows"].numpy()
    model, _, _, _ = load_trained_model(result["best_checkpoint"])
    encoded = table(seed=0, path=str(train_path), target="label", record=record, missing="mean").test.inputs
    with torch.no_grad():
        expected = torch.softmax(model(encoded), dim=1)
    got = [json.loads(out)[i]["predictions"] for i in test_rows]
    for row, probabilities in zip(got, expected, strict=True):
        by_class = dict(zip(["neg", "pos"], probabilities.tolist(), strict=True))
        assert {p["class"]: p["probability"] for p in row} == pytest.approx(by_class)
    code, out, _ = cli("predict", result["run_dir"], path)
    assert out.splitlines()[0].startswith(f"{path} row 2: ") and len(out.splitlines()) == 200


def test_predicted_regression_values_are_in_the_targets_units(tmp_path, cli):
    result = _price_line(tmp_path)
    fresh = without(rule_columns(50, seed=3), "label")
    code, out, err = cli("predict", result["best_checkpoint"], write_csv(tmp_path / "new.csv", fresh), "--json")
    assert code == 0, err
    assert [r["prediction"] for r in json.loads(out)] == pytest.approx(fresh["price"], abs=0.02)


def test_rows_predict_cannot_encode_get_one_line(label_run, tmp_path, cli):
    result, _ = label_run
    columns = without(rule_columns(20, seed=2), "label", "price")
    cases = [
        ({k: v for k, v in columns.items() if k != "x2"} | {"x_2": columns["x2"]}, "lacks the column 'x2'"),
        ({**columns, "x0": ["1.5x" if i == 4 else v for i, v in enumerate(columns["x0"])]}, "holds numbers except in"),
        ({**columns, "x1": ["low"] * 20}, "column 'x1' holds text; the model takes numbers"),
        ({**columns, "x3": [float("inf")] + columns["x3"][1:]}, "column 'x3' is infinite"),
    ]
    for i, (content, message) in enumerate(cases):
        code, out, err = cli("predict", result["run_dir"], write_csv(tmp_path / f"bad{i}.csv", content))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (message, err)
    assert "did you mean 'x_2'" in cli("predict", result["run_dir"], tmp_path / "bad0.csv")[2]


def test_a_value_beyond_float32_once_standardised_is_one_line_not_a_numpy_warning(label_run, tmp_path, cli):
    import warnings

    result, _ = label_run
    columns = without(rule_columns(20, seed=2), "label", "price")
    path = write_csv(tmp_path / "far.csv", {**columns, "x3": columns["x3"][:6] + [1e300] + columns["x3"][7:]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" would be a second line
        code, out, err = cli("predict", result["run_dir"], path)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {path}: column 'x3' holds values too far from the training rows' to encode as float32 "
        "(row 8: 1e+300); rescale the column"
    ]


def test_predict_without_the_runs_fill_for_missing_values_names_the_rows(tmp_path, cli):
    path = write_csv(tmp_path / "train.csv", without(rule_columns(200), "price"))
    run = trainkit.train(table_config(tmp_path, path, "label"), quiet=True)["run_dir"]  # data.missing: error
    columns = without(rule_columns(10, seed=4), "label", "price")
    columns["color"][5] = None
    code, _, err = cli("predict", run, write_csv(tmp_path / "gaps.csv", columns))
    assert code == 2
    gaps = tmp_path / "gaps.csv"
    assert f"{gaps}: values are missing in row 7; the model was trained with data.missing: error" in err
