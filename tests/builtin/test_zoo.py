"""Models by name from torchvision and timm: names, options, input adaptation, pretrained
weights from a local cache only, and the cached catalogue that keeps `validate` fast."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import yaml

import trainkit
from conftest import load_ckpt, subprocess_env, tiny_config, write_config


@pytest.fixture(scope="module")
def zoo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo_cache")


@pytest.fixture(autouse=True)
def own_caches(monkeypatch, tmp_path, zoo_cache):
    """The zoo's catalogue cache and the weight caches point into temporary folders."""
    monkeypatch.setenv("TRAINKIT_CACHE_DIR", str(zoo_cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def _config(tmp_path, model, name="zoo", **data):
    config = tiny_config(tmp_path, name=name)
    config["model"] = model
    config["data"].update({"n_train": 32, "n_test": 16, "size": 16, "channels": 1, **data})
    config["trainer"]["epochs"] = 1
    return config


def _validate(cli, tmp_path, config, *overrides):
    return cli("validate", write_config(tmp_path / "cfg.yaml", config), *overrides)


# ---------------------------------------------------------------- names and options


def test_torchvision_name_validates_with_the_builders_options(cli, tmp_path):
    config = _config(tmp_path, {"name": "torchvision.resnet18", "zero_init_residual": True})
    code, out, err = _validate(cli, tmp_path, config)
    assert code == 0, err
    assert yaml.safe_load(out)["model"] == {
        "name": "torchvision.resnet18",
        "weights": None,
        "num_classes": None,
        "zero_init_residual": True,
        "groups": 1,
        "width_per_group": 64,
        "replace_stride_with_dilation": None,
    }


def test_options_the_constructor_does_not_take_and_bad_values(cli, tmp_path):
    config = _config(tmp_path, {"name": "torchvision.resnet18", "zero_init": True, "weights": "IMAGENET"})
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2
    lines = err.splitlines()
    assert lines[2].endswith("model.weights: should be 'DEFAULT' or 'IMAGENET1K_V1', got 'IMAGENET'"), err
    assert lines[1].endswith(
        "model.zero_init: model 'torchvision.resnet18' has no option 'zero_init'; did you mean 'zero_init_residual'? "
        "(model keys: weights, num_classes, zero_init_residual, groups, width_per_group, replace_stride_with_dilation, "
        "init_from, init_strict, freeze, freeze_bn)"
    ), err


def test_unknown_names_get_did_you_mean_over_the_real_list(cli, tmp_path):
    import torchvision

    count = len(torchvision.models.list_models(module=torchvision.models))
    code, _, err = _validate(cli, tmp_path, _config(tmp_path, {"name": "torchvision.resnet19"}))
    assert code == 2
    assert err.endswith(
        "model.name: unknown model 'torchvision.resnet19'; did you mean 'torchvision.resnet18'? "
        f"(`trainkit ls models torchvision` lists its {count} names)\n"
    ), err
    if importlib.util.find_spec("timm") is not None:
        code, _, err = _validate(cli, tmp_path, _config(tmp_path, {"name": "timm.convnext_atoo"}))
        assert code == 2 and "did you mean 'timm.convnext_atto'?" in err, err


def test_timm_without_timm_names_the_extra(cli, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    code, _, err = _validate(cli, tmp_path, _config(tmp_path, {"name": "timm.resnet18"}))
    assert code == 2
    assert err.endswith("model.name: model 'timm.resnet18' needs the timm package: pip install 'trainkit[timm]'\n")


def test_ls_lists_families_their_names_and_a_models_options(cli):
    code, out, err = cli("ls", "models")
    assert code == 0, err
    assert "  torchvision.*          80 models from torchvision (trainkit ls models torchvision)" in out
    assert "  timm.*" in out
    code, out, _ = cli("ls", "models", "torchvision")
    assert code == 0 and "torchvision.resnet18\n" in out and "torchvision.vit_b_16\n" in out
    code, out, _ = cli("ls", "models", "torchvision.efficientnet_b0")
    assert code == 0 and "options: weights=None, num_classes=None, stochastic_depth_prob=0.2, dropout=0.2" in out
    code, _, err = cli("ls", "models", "vision")
    assert (code, err) == (2, "error: unknown model family 'vision'; choose one of torchvision, timm\n")


def test_validate_needs_no_torch_once_the_catalogue_is_cached(tmp_path, zoo_cache):
    path = write_config(tmp_path / "cfg.yaml", _config(tmp_path, {"name": "torchvision.resnet50"}))
    code = (
        "import sys; from trainkit.config import load_config; "
        f"load_config({str(path)!r}); print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
    )
    env = subprocess_env() | {"TRAINKIT_CACHE_DIR": str(zoo_cache)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "[]"


def test_a_damaged_cache_is_computed_again(tmp_path, monkeypatch):
    from trainkit.builtin.zoo import TorchvisionFamily

    monkeypatch.setenv("TRAINKIT_CACHE_DIR", str(tmp_path / "cache"))
    family = TorchvisionFamily()
    assert "resnet18" in family.names()
    (cached,) = (tmp_path / "cache").glob("zoo-torchvision-*.json")
    assert json.loads(cached.read_text())["specs"]["resnet18"]["options"][0]["name"] == "weights"
    cached.write_text("{ damaged")
    assert "resnet18" in TorchvisionFamily().names()
    assert json.loads(cached.read_text())["names"] == family.names()


# ---------------------------------------------------------------- building and training


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory, zoo_cache):
    """torchvision.resnet18 trained on 1-channel 16x16 images (repeated to its 3-channel stem)."""
    tmp = tmp_path_factory.mktemp("grey")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAINKIT_CACHE_DIR", str(zoo_cache))
        trainkit.train(_config(tmp, {"name": "torchvision.resnet18"}), quiet=True)
    return tmp / "ckpt" / "zoo"


def test_grayscale_small_images_train_evaluate_and_predict(grey_run, tmp_path):
    from PIL import Image

    from trainkit.tools.predict import predict

    assert load_ckpt(grey_run / "last.pt")["model"]["conv1.weight"].shape == (64, 3, 7, 7)  # the stock stem
    assert trainkit.evaluate(grey_run)["samples"] == 16
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.png")
    assert len(predict(grey_run, [tmp_path / "grey.png"], top_k=2)[0]["predictions"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_export_of_a_torchvision_model(grey_run, tmp_path, fmt):
    from trainkit.tools.export import deployable, export, load_exported
    from trainkit.training.restore import load_trained_model

    export(grey_run, tmp_path / "model.pt2", fmt)
    model, info, _, _ = load_trained_model(grey_run)
    x = torch.rand(3, 1, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(load_exported(tmp_path / "model.pt2", fmt)(x), deployable(model, info)[0](x), atol=1e-5)


def test_images_too_small_for_the_architecture(tmp_path, cli):
    config = _config(tmp_path, {"name": "torchvision.alexnet"})
    code, _, err = cli("train", write_config(tmp_path / "cfg.yaml", config), "-q")
    assert code == 2
    assert err.startswith(
        "error: model.name: torchvision.alexnet needs images of at least 63x63 pixels; the data set gives 16x16 ("
    ), err
    assert err.endswith("); resize them (data.image_size: 63 on data sets that have it)\n"), err
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.slow
def test_a_vit_takes_the_data_sets_image_size(tmp_path):
    config = _config(tmp_path, {"name": "torchvision.vit_b_32", "dropout": 0.1}, size=32, channels=3)
    trainkit.train(config, quiet=True)
    assert load_ckpt(tmp_path / "ckpt" / "zoo" / "last.pt")["model"]["encoder.pos_embedding"].shape == (1, 2, 768)


def test_more_channels_than_the_stem_takes(tmp_path, cli):
    config = _config(tmp_path, {"name": "torchvision.resnet18"}, channels=2)
    code, _, err = cli("train", write_config(tmp_path / "cfg.yaml", config), "-q")
    assert (code, err) == (
        2,
        "error: model.name: torchvision.resnet18 takes 3-channel images; the data set has 2 channels\n",
    )


# ---------------------------------------------------------------- pretrained weights


def _torchvision_weights(tmp_path):
    """A resnet18 state_dict (1000 classes) where torch.hub keeps the IMAGENET1K_V1 download."""
    import torchvision

    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, path)
    return path, weights


def test_missing_torchvision_weights_say_which_file_goes_where(tmp_path, cli):
    config = _config(tmp_path, {"name": "torchvision.resnet18", "weights": "DEFAULT"})
    code, _, err = cli("train", write_config(tmp_path / "cfg.yaml", config), "-q")
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert (code, err) == (
        1,
        "error: model.weights: ResNet18_Weights.IMAGENET1K_V1 is not in the local torch hub cache and trainkit "
        "never downloads: put resnet18-f37072fd.pth (from https://download.pytorch.org/models/resnet18-f37072fd.pth) "
        f"in {folder}/ (the cache is $TORCH_HOME/hub/checkpoints, ~/.cache/torch by default)\n",
    )
    assert not list(folder.parent.rglob("*.pth")), "nothing downloaded"


def test_cached_torchvision_weights_load_and_the_head_is_replaced(tmp_path, cli, monkeypatch):
    path, weights = _torchvision_weights(tmp_path)
    config = _config(tmp_path, {"name": "torchvision.resnet18", "weights": "IMAGENET1K_V1", "freeze": ["conv1.*"]})
    code, _, err = cli("train", write_config(tmp_path / "cfg.yaml", config))
    assert code == 0, err
    assert "model.weights: IMAGENET1K_V1 was trained on 1000 classes, the data set has 4: fc re-initialised\n" in err
    ckpt = load_ckpt(tmp_path / "ckpt" / "zoo" / "last.pt")
    assert torch.equal(ckpt["model"]["conv1.weight"], weights["conv1.weight"])
    assert ckpt["model"]["fc.weight"].shape == (4, 512)
    # evaluating, resuming, exporting: the checkpoint's weights, no cache needed
    path.unlink()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "elsewhere"))
    assert trainkit.evaluate(tmp_path / "ckpt" / "zoo")["samples"] == 16
    trainkit.resume(tmp_path / "ckpt" / "zoo", ["trainer.epochs=2"], quiet=True)


def _timm_weights(tmp_path, repo="timm/resnet18.a1_in1k"):
    """A timm resnet18 state_dict in the Hugging Face hub cache layout."""
    import timm
    from safetensors.torch import save_file

    folder = tmp_path / "hf_home" / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    weights = timm.create_model("resnet18").state_dict()
    save_file(weights, str(folder / "snapshots" / "0123abcd" / "model.safetensors"))
    return weights


def test_timm_model_trains_with_its_options(tmp_path, cli):
    pytest.importorskip("timm")
    config = _config(tmp_path, {"name": "timm.resnet18", "drop_rate": 0.2}, channels=3)
    trainkit.train(config, quiet=True)
    config["model"]["drop_rat"] = 0.2
    code, _, err = _validate(cli, tmp_path, config)
    assert code == 2 and "model 'timm.resnet18' has no option 'drop_rat'; did you mean 'drop_rate'?" in err


def test_timm_pretrained_from_the_hugging_face_cache(tmp_path, cli):
    pytest.importorskip("timm")
    config = _config(tmp_path, {"name": "timm.resnet18", "pretrained": True, "freeze": ["conv1.*"]})
    code, _, err = cli("train", write_config(tmp_path / "cfg.yaml", config), "-q")
    assert code == 1
    hub = tmp_path / "hf_home" / "hub" / "models--timm--resnet18.a1_in1k"
    assert err.startswith(
        "error: model.pretrained: the weights of timm.resnet18 are not in the local cache and trainkit never "
        f"downloads: put model.safetensors of https://huggingface.co/timm/resnet18.a1_in1k in {hub}/snapshots/"
    ), err
    assert err.count("\n") == 1
    weights = _timm_weights(tmp_path)
    code, _, err = cli("train", write_config(tmp_path / "cfg.yaml", config))
    assert code == 0, err
    assert "model.pretrained: timm.resnet18 was trained on 1000 classes, the data set has 4" in err
    ckpt = load_ckpt(tmp_path / "ckpt" / "zoo" / "last.pt")
    assert torch.equal(ckpt["model"]["conv1.weight"], weights["conv1.weight"])


# ---------------------------------------------------------------- every torchvision model


def _torchvision_names():
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.slow
@pytest.mark.parametrize("name", _torchvision_names())
def test_every_torchvision_spec_fits_its_builder(name):
    """Each option of the spec is accepted by the builder at its default (built on the meta
    device), and swapping the 1000-class head for 10 classes gives the 10-class architecture."""
    import torchvision

    from trainkit.builtin import zoo_torchvision
    from trainkit.builtin.zoo_common import replace_heads

    spec = zoo_torchvision.spec(name)
    options = {o["name"]: o["default"] for o in spec["options"] if o["name"] not in ("weights", "num_classes")}
    for key in ("image_size", "input_size"):
        if key in options:
            options[key] = [224, 224] if key == "input_size" else 224
    device = "cpu" if name.startswith("regnet") else "meta"  # regnet computes its widths with tensors
    if device == "cpu" and not name.endswith(("400mf", "800mf")):
        pytest.skip("large regnets are built on the CPU only in their small sizes")
    with torch.device(device):
        explicit = torchvision.models.get_model(name, num_classes=1000, **options)
        ten = torchvision.models.get_model(name, num_classes=10, **options)
    assert replace_heads(explicit, 1000, 10)
    assert {k: tuple(v.shape) for k, v in explicit.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ten.state_dict().items()
    }


@pytest.mark.parametrize(
    "model, message",
    [
        (
            {"name": "torchvision.resnet18", "num_classes": 3},
            "model.num_classes: 3 cannot hold the data set's 4 classes (leave it out to match them)",
        ),
        (
            {"name": "torchvision.resnet18", "num_classes": 0},
            "model.num_classes: 0 cannot hold the data set's 4 classes (leave it out to match them)",
        ),
        (
            {"name": "torchvision.resnext50_32x4d", "replace_stride_with_dilation": [True]},
            "model.name: torchvision.resnext50_32x4d cannot be built with these options: "
            "replace_stride_with_dilation should be None or a 3-element tuple, got [True]",
        ),
        (
            {"name": "torchvision.googlenet", "aux_logits": True},
            "model.name: torchvision.googlenet returns GoogLeNetOutputs in training, not one tensor of logits; "
            "trainkit trains the main output (turn auxiliary outputs off, e.g. model.aux_logits: false)",
        ),
    ],
)
def test_options_that_do_not_build(tmp_path, cli, model, message):
    code, _, err = cli("train", write_config(tmp_path / "cfg.yaml", _config(tmp_path, model)), "-q")
    assert (code, err) == (2, f"error: {message}\n")
