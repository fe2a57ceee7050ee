"""`trainkit plot`: a real PNG of the expected size from one or several runs; a clear error
without matplotlib."""

from __future__ import annotations

import sys

import pytest

from helpers_ecosystem import png_size, regression_config, train_tiny

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    first = train_tiny(base, name="adam_run")["run_dir"]
    second = train_tiny(base, ["optimizer.lr=0.002", "trainer.epochs=3"], name="slow_run")["run_dir"]
    return first, second


def test_plot_two_runs_writes_png_of_default_size(cli, tmp_path, two_runs):
    out = tmp_path / "curves.png"
    code, stdout, err = cli("plot", *two_runs, "-o", out)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"
    assert png_size(out) == (900, 350)


def test_plot_size_options_and_svg(cli, tmp_path, two_runs):
    out = tmp_path / "small.png"
    code, _, err = cli("plot", two_runs[0], "--output", out, "--width", "640", "--height", "300")
    assert code == 0, err
    assert png_size(out) == (640, 300)
    svg = tmp_path / "curves.svg"
    code, _, err = cli("plot", two_runs[1], "-o", svg)
    assert code == 0, err
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_default_output_is_curves_png_in_the_working_folder(cli, tmp_path, two_runs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("plot", two_runs[0])
    assert code == 0, err
    assert png_size(tmp_path / "curves.png") == (900, 350)


def test_curves_read_from_metrics(two_runs):
    from trainkit.runfolder.runlog import read_records
    from trainkit.tools.plot import load_curves

    curves = load_curves(two_runs[1])
    epochs = read_records(two_runs[1], "epoch")
    train = read_records(two_runs[1], "train")
    assert curves["name"] == "slow_run" and curves["score_key"] == "val_accuracy"
    assert curves["val_loss"] == ([1, 2, 3], [r["val_loss"] for r in epochs])
    assert curves["score"] == ([1, 2, 3], [r["val_accuracy"] for r in epochs])
    xs, ys = curves["train"]
    assert ys == [r["loss"] for r in train]
    # train records sit at fractional epochs: within their epoch, increasing, the last at its end
    assert all(r["epoch"] - 1 < x <= r["epoch"] for x, r in zip(xs, train, strict=True))
    assert xs == sorted(xs) and xs[-1] == pytest.approx(3.0)


def test_regression_run_plots_validation_mae(cli, tmp_path):
    import trainkit
    from trainkit.tools.plot import load_curves

    run_dir = trainkit.train(regression_config(tmp_path), quiet=True)["run_dir"]
    assert load_curves(run_dir)["score_key"] == "val_mae"
    code, _, err = cli("plot", f"{run_dir}/metrics.jsonl", "-o", tmp_path / "line.png")
    assert code == 0, err
    assert png_size(tmp_path / "line.png") == (900, 350)


def test_without_matplotlib_says_how_to_install(cli, tmp_path, two_runs, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib...` now raises ImportError
    code, out, err = cli("plot", two_runs[0], "-o", tmp_path / "x.png")
    assert code == 2 and out == ""
    assert err.strip() == "error: plotting needs matplotlib: pip install 'trainkit[plot]'"
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing"], "no metrics found"),
        (["{run}", "-o", "{tmp}/curves.xyz"], "cannot write"),
        (["{run}", "-o", "{tmp}/no/such/dir/c.png"], "cannot write"),
        (["{run}", "--width", "20"], "too small"),
        (["{tmp}/empty"], "holds no training records"),
    ],
)
def test_bad_input_exits_2(cli, tmp_path, two_runs, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    args = [a.format(tmp=tmp_path, run=two_runs[0]) for a in args]
    code, out, err = cli("plot", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err
