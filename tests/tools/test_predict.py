"""`trainkit predict`: image files are classified exactly as `trainkit eval` sees the same images."""

from __future__ import annotations

import json
import re

import pytest
import torch

import trainkit
from conftest import SHARED_DATA, tiny_config
from helpers_ecosystem import regression_config
from trainkit.builtin.datasets import synthetic_images

Image = pytest.importorskip("PIL.Image")

DATA = {"n_train": 192, "n_test": 24, "size": 8, "num_classes": 4, "noise": 30.0}


def _save_pngs(inputs: torch.Tensor, folder, suffix: str = ".png") -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(inputs):
        array = image.permute(1, 2, 0).squeeze(2).numpy()  # (H, W) grey or (H, W, 3) RGB
        path = folder / f"img{i:02d}{suffix}"
        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module", params=[1, 3], ids=["grey", "rgb"])
def trained(request, tmp_path_factory):
    """A checkpoint of a small CNN, and its test images written as PNG files."""
    channels = request.param
    base = tmp_path_factory.mktemp(f"predict{channels}")
    config = tiny_config(base, name=f"c{channels}", data={**DATA, "channels": channels}, trainer={"epochs": 3})
    result = trainkit.train(config, quiet=True)
    test = synthetic_images(seed=0, channels=channels, **DATA).test
    return {
        "ckpt": result["best_checkpoint"],
        "run_dir": result["run_dir"],
        "channels": channels,
        "images": _save_pngs(test.inputs, base / "images"),
        "pixels": test.inputs,
        "labels": test.targets,
    }


def _predict_json(cli, ckpt, *args):
    code, out, err = cli("predict", "--ckpt", ckpt, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_predict_on_test_images_matches_eval_exactly(cli, trained):
    results = _predict_json(cli, trained["ckpt"], *trained["images"], "--top-k", "1")
    predicted = torch.tensor([r["predictions"][0]["index"] for r in results])
    accuracy = (predicted == trained["labels"]).float().mean().item()
    # the same pixels through predict and through eval: the same answers
    assert accuracy == pytest.approx(trainkit.evaluate(trained["ckpt"])["accuracy"])
    assert accuracy >= 0.75, "the tiny model should have learnt the synthetic classes"


def test_probabilities_are_the_models_softmax_of_normalised_pixels(cli, trained):
    from trainkit.config import resolve
    from trainkit.runfolder.checkpoint import load_checkpoint
    from trainkit.training.build import build_model
    from trainkit.training.data import DatasetInfo
    from trainkit.training.restore import load_model_state

    ckpt = load_checkpoint(trained["ckpt"])
    info = DatasetInfo(**{**ckpt.data_info, "input_shape": tuple(ckpt.data_info["input_shape"])})
    model = build_model(resolve(ckpt.config), info, torch.device("cpu")).eval()
    load_model_state(model, ckpt.model, "test")
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(model((trained["pixels"][:6].float() / 255 - mean) / std), dim=1)

    results = _predict_json(cli, trained["ckpt"], *trained["images"][:6], "--top-k", "4")
    for i, result in enumerate(results):
        assert result["image"] == trained["images"][i]
        probabilities = [p["probability"] for p in result["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert [p["class"] for p in result["predictions"]] == [f"class_{p['index']}" for p in result["predictions"]]
        for p in result["predictions"]:
            assert p["probability"] == pytest.approx(expected[i, p["index"]].item(), abs=1e-5)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)


def test_text_output_and_top_k(cli, trained):
    code, out, err = cli("predict", "--ckpt", trained["run_dir"], *trained["images"][:2], "-k", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    for path, line in zip(trained["images"][:2], lines, strict=True):
        assert re.fullmatch(re.escape(path) + r": class_\d \d+\.\d%, class_\d \d+\.\d%", line), line
    # more classes asked for than exist: all of them
    assert len(_predict_json(cli, trained["ckpt"], trained["images"][0], "--top-k", "10")[0]["predictions"]) == 4


def test_text_output_escapes_what_a_folder_or_column_name_may_hold():
    """Class names are folder names or a table's values: a newline or a terminal escape in one
    must not split a line or reach the terminal (--json keeps them as they are)."""
    from trainkit.tools.predict import format_predictions

    class_ = {"class": "a\nb\x1b[31m", "index": 0, "probability": 0.5}
    image = {"image": "x\ny/0.png", "inverted": False, "auto_inverted": False, "predictions": [class_]}
    assert format_predictions([image]) == "x\\ny/0.png: a\\nb\\x1b[31m 50.0%"
    rows = [{"file": "t\r.csv", "row": 2, "predictions": [class_]}, {"file": "t.csv", "row": 3, "prediction": 1.5}]
    assert format_predictions(rows) == "t\\r.csv row 2: a\\nb\\x1b[31m 50.0%\nt.csv row 3: 1.5"


def test_other_sizes_modes_and_formats_are_converted(cli, trained, tmp_path):
    from trainkit.tools.predict import read_image

    channels = trained["channels"]
    source = Image.open(trained["images"][0])
    big_rgba = source.convert("RGBA").resize((32, 32), Image.Resampling.NEAREST)
    big_rgba.save(tmp_path / "big.png")
    source.convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    pixels = read_image(tmp_path / "big.png", (channels, 8, 8))
    assert pixels.dtype == torch.uint8 and pixels.shape == (channels, 8, 8)
    assert torch.equal(
        read_image(trained["images"][0], (channels, 8, 8), invert=True),
        255 - read_image(trained["images"][0], (channels, 8, 8)),
    )
    results = _predict_json(cli, trained["ckpt"], tmp_path / "big.png", tmp_path / "photo.jpg", "-k", "1")
    assert [len(r["predictions"]) for r in results] == [1, 1]


def test_bad_images_and_checkpoints_exit_2(cli, trained, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    code, out, err = cli("predict", "--ckpt", trained["ckpt"], tmp_path / "notes.png")
    assert code == 2 and out == "" and f"error: cannot read image {tmp_path / 'notes.png'}" in err
    code, out, err = cli("predict", "--ckpt", trained["ckpt"], tmp_path / "missing.png")
    assert code == 2 and err.strip() == f"error: image not found: {tmp_path / 'missing.png'}"
    code, out, err = cli("predict", "--ckpt", tmp_path / "nothing.pt", trained["images"][0])
    assert code == 2 and "checkpoint not found" in err
    code, out, err = cli("predict", "--ckpt", trained["ckpt"], trained["images"][0], "--top-k", "0")
    assert code == 2


def test_regression_checkpoint_is_refused(cli, trained, tmp_path):
    ckpt = trainkit.train(regression_config(tmp_path), quiet=True)["best_checkpoint"]
    code, out, err = cli("predict", "--ckpt", ckpt, trained["images"][0])
    assert code == 2 and out == ""
    assert "is a regression model; predict classifies images" in err


@pytest.mark.realdata
def test_real_mnist_digits(cli, tmp_path):
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST files under {SHARED_DATA}")
    from trainkit.builtin.datasets import mnist

    config = tiny_config(
        tmp_path,
        name="mnist_quick",
        model={"channels": [8, 16], "hidden": 32},
        trainer={"epochs": 1, "limit_batches": 80, "limit_eval_batches": 1},
    )
    config["data"] = {
        "name": "mnist",
        "root": str(SHARED_DATA),
        "download": False,
        "batch_size": 64,
        "eval_batch_size": 100,
    }
    result = trainkit.train(config, quiet=True)
    test = mnist(root=str(SHARED_DATA), download=False).test
    images = _save_pngs(test.inputs[:40], tmp_path / "digits")  # real digits as PNG files
    results = _predict_json(cli, result["last_checkpoint"], *images, "-k", "1")
    predicted = [int(r["predictions"][0]["class"]) for r in results]
    correct = sum(p == t for p, t in zip(predicted, test.targets[:40].tolist(), strict=True))
    assert correct >= 32, f"only {correct}/40 real digits right"


def test_a_dark_on_light_image_is_inverted_for_light_on_dark_data_and_says_so(cli, tmp_path):
    """MNIST-like data (dark border) and a photo of a digit (light border): the image is
    inverted before it is classified, the output says so, and --no-invert / --invert decide."""
    import numpy as np

    from conftest import write_idx

    rng = np.random.default_rng(0)
    raw = tmp_path / "data" / "MNIST" / "raw"
    for prefix, n in (("train", 64), ("t10k", 16)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 8:20, 8:20] = rng.integers(128, 256, (n, 12, 12))  # light strokes on black, as MNIST
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    config = tiny_config(tmp_path, trainer={"epochs": 1})
    config["model"] = {"name": "mlp", "hidden": [8]}
    config["data"] = {"name": "mnist", "root": str(tmp_path / "data"), "download": False, "batch_size": 16}
    run = trainkit.train(config, quiet=True)["run_dir"]
    photo = np.full((28, 28), 250, dtype=np.uint8)
    photo[8:20, 12:16] = 20  # a dark stroke on white paper
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(255 - photo).save(tmp_path / "scan.png")  # the same digit, as MNIST has it

    auto, scan = _predict_json(cli, run, tmp_path / "photo.png", tmp_path / "scan.png", "-k", "10")
    assert auto["inverted"] is True and scan["inverted"] is False
    assert auto["predictions"] == scan["predictions"]  # the photo, inverted, is the scan
    kept = _predict_json(cli, run, tmp_path / "photo.png", "--no-invert", "-k", "10")[0]
    assert kept["inverted"] is False and kept["predictions"] != auto["predictions"]
    forced = _predict_json(cli, run, tmp_path / "scan.png", "--invert", "-k", "10")[0]
    assert forced["inverted"] is True and forced["predictions"] == kept["predictions"]
    code, out, _ = cli("predict", run, tmp_path / "photo.png", "-k", "1")
    assert code == 0 and out.startswith(
        f"{tmp_path / 'photo.png'} (inverted: its background is the opposite of the training images'; "
        "--no-invert to keep it): "
    )
