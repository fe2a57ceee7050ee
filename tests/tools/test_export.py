"""`trainkit export`: the written file runs in a Python where trainkit cannot be imported and
computes what the checkpoint's model computes, normalisation included."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import trainkit
from conftest import tiny_config
from helpers_ecosystem import regression_config
from trainkit.builtin.datasets import synthetic_images

DATA = {"n_train": 96, "n_test": 16, "size": 8, "num_classes": 4, "channels": 3}
MODELS = {
    "cnn": {"name": "cnn", "channels": [4, 8], "hidden": 16, "dropout": 0.5},  # dropout must be off in the file
    "fast_cnn": {"name": "fast_cnn", "widths": [4, 8]},  # BatchNorm must use its running statistics
}

# Runs with `python -I` (no PYTHONPATH, no user site, no working folder on sys.path) and
# with trainkit blocked outright: the exported files must need torch alone.
RUNNER = r"""
import sys
sys.modules["trainkit"] = None
import json
import torch
try:
    import trainkit
except ImportError:
    pass
else:
    raise SystemExit("trainkit was importable")
spec = json.loads(sys.argv[1])
x = torch.load(spec["inputs"], weights_only=True)
outputs = {}
for fmt, path in spec["files"].items():
    model = torch.export.load(path).module() if fmt == "export" else torch.jit.load(path)
    with torch.no_grad():
        outputs[fmt] = model(x)
torch.save(outputs, spec["outputs"])
"""


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"export_{request.param}")
    config = tiny_config(base, name=request.param, data=DATA)
    config["model"] = MODELS[request.param]
    return base, trainkit.train(config, quiet=True)["best_checkpoint"]


def _reference(ckpt: str, pixels: torch.Tensor) -> torch.Tensor:
    """The checkpoint's model on uint8 pixels, normalised by training's own code path."""
    from trainkit.tools.predict import model_inputs
    from trainkit.training.restore import load_trained_model

    model, info, _, _ = load_trained_model(ckpt)
    with torch.no_grad():
        return model(model_inputs(pixels, info))


def test_exported_files_run_without_trainkit_and_match_the_checkpoint(cli, trained):
    base, ckpt = trained
    files = {"export": base / "model.pt2", "torchscript": base / "model.ts"}
    for fmt, path in files.items():
        code, out, err = cli("export", "--ckpt", ckpt, "-o", path, "--format", fmt)
        assert code == 0, err
        assert err == ""  # no deprecation or file-name warnings from torch
        assert out.startswith(f"wrote {path} ({fmt}, ") and "float images in [0, 1]" in out
        assert "shape (N, 3, 8, 8)" in out

    pixels = synthetic_images(seed=0, **DATA).test.inputs[:5]  # a batch of 5: the file's batch is not fixed
    torch.save(pixels.float() / 255, base / "inputs.pt")
    spec = {
        "inputs": str(base / "inputs.pt"),
        "outputs": str(base / "outputs.pt"),
        "files": {fmt: str(path) for fmt, path in files.items()},
    }
    run = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER, json.dumps(spec)], cwd=base, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr

    outputs = torch.load(base / "outputs.pt", weights_only=True)
    expected = _reference(ckpt, pixels)
    for fmt in files:
        assert outputs[fmt].shape == (5, 4)
        assert torch.allclose(outputs[fmt], expected, rtol=1e-4, atol=1e-5), fmt


def test_default_format_and_metadata(cli, trained, tmp_path):
    _, ckpt = trained
    path = tmp_path / "model.pt2"
    code, out, err = cli("export", "--ckpt", ckpt, "-o", path)
    assert code == 0, err
    assert "(export, " in out and "torch.export.load(path).module()" in out
    extra = {"trainkit.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra["trainkit.json"])
    assert meta["class_names"] == [f"class_{i}" for i in range(4)]
    assert meta["input_shape"] == [None, 3, 8, 8] and meta["task"] == "classification"
    assert program.module()(torch.rand(1, 3, 8, 8)).shape == (1, 4)  # batch of one works too


def test_regression_model_takes_raw_features(cli, tmp_path):
    from trainkit.tools.export import load_exported
    from trainkit.training.restore import load_trained_model

    ckpt = trainkit.train(regression_config(tmp_path), quiet=True)["best_checkpoint"]
    path = tmp_path / "line.pt2"
    code, out, err = cli("export", "--ckpt", ckpt, "-o", path)
    assert code == 0, err
    assert "no normalisation recorded" in out
    x = torch.randn(7, 1)
    model, _, _, _ = load_trained_model(ckpt)
    with torch.no_grad():
        assert torch.allclose(load_exported(path, "export")(x), model(x))


def test_bad_format_and_paths_exit_2(cli, trained, tmp_path):
    _, ckpt = trained
    code, out, err = cli("export", "--ckpt", ckpt, "-o", tmp_path / "m.onnx", "--format", "onnx")
    assert code == 2 and "unknown export format 'onnx'; choose one of export, torchscript" in err
    code, out, err = cli("export", "--ckpt", ckpt, "-o", tmp_path / "no" / "m.pt2")
    assert code == 2 and "folder does not exist" in err
    code, out, err = cli("export", "--ckpt", ckpt, "-o", tmp_path)
    assert code == 2 and "is a folder" in err
    code, out, err = cli("export", "--ckpt", tmp_path / "none.pt", "-o", tmp_path / "m.pt2")
    assert code == 2 and "checkpoint not found" in err
    assert not list(tmp_path.glob("*.pt2")) and not list(tmp_path.glob(".*tmp*"))


def test_export_replaces_only_its_own_files(cli, trained, tmp_path):
    """-o naming a config or a checkpoint by mistake overwrote it; a file an export wrote is
    replaced, as a second export to the same path should."""
    _, ckpt = trained
    config = tmp_path / "experiment.yaml"
    config.write_text("name: mine\n")
    code, out, err = cli("export", "--ckpt", ckpt, "-o", config)
    assert code == 2 and err.strip() == (
        f"error: {config} exists and is not a model trainkit exported; export replaces only its own files: "
        "give another -o, or move that file away"
    )
    assert config.read_text() == "name: mine\n"
    for fmt in ("torchscript", "export", "export"):  # one export replaces another, whatever its format
        code, out, err = cli("export", "--ckpt", ckpt, "-o", tmp_path / "model.bin", "--format", fmt)
        assert code == 0, err


def test_an_export_under_any_name_is_read_back_without_torch_warnings(trained, tmp_path):
    """The read-back check gave torch.export a name not ending in .pt2: it logged "Unable to load package"."""
    from conftest import TRAINKIT, subprocess_env

    _, ckpt = trained
    done = subprocess.run(
        TRAINKIT + ["export", "--ckpt", str(ckpt), "-o", str(tmp_path / "model.bin")],
        capture_output=True, text=True, env=subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_channels_last_run_exports_and_loads_without_torch_warnings(tmp_path):
    """Channels-last weights are not contiguous; saved as they are, torch.export warns "No
    complete tensor found" about each. The model is rebuilt in the standard layout instead."""
    import warnings

    from trainkit.tools.export import export, load_exported

    config = tiny_config(tmp_path, name="cl", data=DATA, trainer={"epochs": 1, "channels_last": True})
    ckpt = trainkit.train(config, quiet=True)["best_checkpoint"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(ckpt, tmp_path / "cl.pt2")
        model = load_exported(tmp_path / "cl.pt2", "export")
    assert [str(w.message) for w in caught if "complete tensor" in str(w.message)] == []
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)
