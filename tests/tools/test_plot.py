"""`trainkit plot`: a real PNG of the expected size from one or several runs; a clear error
without matplotlib."""

from __future__ import annotations

import sys

import pytest

from conftest import tiny_config
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


def test_damaged_lines_of_the_metrics_are_left_out_the_rest_is_read(two_runs, tmp_path):
    """A line cut short by a kill -9, or bytes damaged on disk (not even UTF-8), in the middle."""
    import shutil

    from trainkit.runfolder.runlog import read_records

    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    damaged = lines[:2] + [b'{"type": "ep\xff\xfe\n', b"\x80[1, 2]\n"] + lines[2:]
    (run / "metrics.jsonl").write_bytes(b"".join(damaged))
    assert read_records(run) == read_records(two_runs[0]) and len(read_records(run)) == len(lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing"], "no metrics found"),
        (["{run}", "-o", "{tmp}/curves.xyz"], "cannot write"),
        (["{run}", "-o", "{tmp}/no/such/dir/c.png"], "cannot write"),
        (["{run}", "--width", "20"], "too small"),
        (["{tmp}/empty"], "holds no training records"),
        (["{tmp}/damaged"], "holds no training records"),
    ],
)
def test_bad_input_exits_2(cli, tmp_path, two_runs, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "metrics.jsonl").write_bytes(b"\xff\xfe not even UTF-8\n")
    args = [a.format(tmp=tmp_path, run=two_runs[0]) for a in args]
    code, out, err = cli("plot", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err


# ------------------------------------------------------------------ the figure's axes, read back


def _axes(fig):
    return {ax.get_title(): ax for ax in fig.axes}


def test_a_run_stopped_in_its_first_epoch_spreads_its_steps_over_that_epoch(tmp_path, monkeypatch):
    import trainkit
    from trainkit.errors import TrainingInterrupted
    from trainkit.tools.plot import make_figure
    from trainkit.training.session import Session

    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == 5)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(tiny_config(tmp_path, trainer={"log_every": 1}), quiet=True)
    axes = _axes(make_figure([tmp_path / "ckpt" / "tiny"]))
    assert list(axes) == ["loss"]  # no validation yet: no empty accuracy panel
    (train,) = axes["loss"].get_lines()
    assert list(train.get_xdata()) == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])  # step / 6 steps per epoch
    assert axes["loss"].get_xlim() == (0.0, 1.0)


def test_a_one_epoch_run_has_an_epoch_axis_and_accuracy_within_0_and_1(tmp_path):
    """The report's case: one MNIST epoch of 938 steps ending at 98.1% accuracy."""
    import json

    from trainkit.tools.plot import make_figure

    run = tmp_path / "one_epoch"
    run.mkdir()
    records = [{"type": "train", "epoch": 1, "step": s, "loss": 2.3 / s**0.5, "lr": 0.01} for s in range(50, 938, 50)]
    records.append(
        {"type": "epoch", "epoch": 1, "step": 938, "train_loss": 0.3, "val_loss": 0.06, "val_accuracy": 0.9812}
    )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    axes = _axes(make_figure([run]))
    assert list(axes) == ["loss", "validation accuracy"]
    for ax in axes.values():
        assert ax.get_xlim() == (0.0, 1.0)
        assert [t for t in ax.get_xticks() if 0 <= t <= 1] == [0.0, 1.0]  # whole epochs
    train_x = axes["loss"].get_lines()[0].get_xdata()
    assert list(train_x) == pytest.approx([s / 938 for s in range(50, 938, 50)])
    low, high = axes["validation accuracy"].get_ylim()
    assert 0.0 <= low < 0.9812 < high <= 1.0


def test_classification_and_regression_runs_get_an_axis_per_metric(tmp_path):
    import trainkit
    from trainkit.tools.plot import make_figure

    classifier = train_tiny(tmp_path, name="classifier")["run_dir"]
    line = trainkit.train(regression_config(tmp_path), quiet=True)["run_dir"]
    axes = _axes(make_figure([classifier, line]))
    assert list(axes) == ["loss", "validation accuracy", "validation MAE"]
    assert [line.get_label() for line in axes["validation accuracy"].get_lines()] == ["classifier"]
    assert [line.get_label() for line in axes["validation MAE"].get_lines()] == ["line"]
    low, high = axes["validation accuracy"].get_ylim()
    assert 0.0 <= low < high <= 1.0
