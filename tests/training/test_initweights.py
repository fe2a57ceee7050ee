"""model.init_from: a new run starts from a run folder, a checkpoint or a bare state_dict."""

from __future__ import annotations

import pytest
import torch

import trainkit
from conftest import CodePayload, load_ckpt, tiny_config, write_config
from trainkit.training.initweights import weights_sha256


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A trained tiny cnn (4 classes) to start from."""
    tmp = tmp_path_factory.mktemp("source")
    trainkit.train(tiny_config(tmp, name="src", trainer={"epochs": 1}), quiet=True)
    return tmp / "ckpt" / "src"


def _start_from(tmp_path, init_from, name="ft", **sections):
    config = tiny_config(tmp_path, name=name, **sections)
    config["model"] = {**config["model"], "init_from": str(init_from), **sections.get("model", {})}
    config["trainer"] = {**config["trainer"], "epochs": 1}
    return config


def test_from_a_run_folder_takes_best_weights_and_records_them(tmp_path, source_run):
    source = load_ckpt(source_run / "best.pt")
    config = _start_from(tmp_path, source_run, model={"freeze": ["conv1.*"]})
    trainkit.train(config, quiet=True)
    ckpt = load_ckpt(tmp_path / "ckpt" / "ft" / "last.pt")
    assert torch.equal(ckpt["model"]["conv1.weight"], source["model"]["conv1.weight"])  # loaded, then frozen
    assert ckpt["step"] == 6 and ckpt["epoch"] == 1  # a new run: step 0 was its start
    assert ckpt["started_from"] == {
        "path": str((source_run / "best.pt").resolve()),
        "kind": "checkpoint",
        "weights_sha256": weights_sha256(source["model"]),
        "reinitialized": [],
        "skipped": [],
    }
    # the record survives a resume, and the source is not needed then
    trainkit.resume(tmp_path / "ckpt" / "ft", ["trainer.epochs=2"], quiet=True)
    assert load_ckpt(tmp_path / "ckpt" / "ft" / "last.pt")["started_from"] == ckpt["started_from"]


@pytest.mark.parametrize("wrap", ["bare", "ddp prefix", "compile prefix", "nested"])
def test_from_a_bare_state_dict(tmp_path, source_run, wrap):
    weights = load_ckpt(source_run / "best.pt")["model"]
    saved = {
        "bare": weights,
        "ddp prefix": {f"module.{k}": v for k, v in weights.items()},
        "compile prefix": {f"_orig_mod.{k}": v for k, v in weights.items()},
        "nested": {"state_dict": weights, "epoch": 3},
    }[wrap]
    torch.save(saved, tmp_path / "weights.pth")
    trainkit.train(_start_from(tmp_path, tmp_path / "weights.pth", model={"freeze": ["fc1.*"]}), quiet=True)
    ckpt = load_ckpt(tmp_path / "ckpt" / "ft" / "last.pt")
    assert torch.equal(ckpt["model"]["fc1.weight"], weights["fc1.weight"])
    assert ckpt["started_from"]["kind"] == "state_dict"
    assert ckpt["started_from"]["weights_sha256"] == weights_sha256(weights)


def test_a_head_of_another_class_count_is_reinitialised(tmp_path, source_run, cli):
    config = _start_from(tmp_path, source_run, data={"num_classes": 6})
    code, _, err = cli("train", write_config(tmp_path / "ft.yaml", config))
    assert code == 0, err
    best = (source_run / "best.pt").resolve()
    assert f"model.init_from: fc2.weight, fc2.bias re-initialised: {best} has 4 classes, the data set 6\n" in err
    ckpt = load_ckpt(tmp_path / "ckpt" / "ft" / "last.pt")
    assert ckpt["started_from"]["reinitialized"] == ["fc2.weight", "fc2.bias"]
    assert ckpt["model"]["fc2.weight"].shape == (6, 16)


def test_another_architecture_is_a_config_error_listing_what_does_not_fit(tmp_path, source_run, cli):
    config = _start_from(tmp_path, source_run, model={"hidden": 32})
    code, _, err = cli("train", write_config(tmp_path / "ft.yaml", config), "-q")
    best = (source_run / "best.pt").resolve()
    assert code == 2
    assert err == (
        f"error: model.init_from: {best} does not fit model 'cnn': fc1.weight is (16, 32) there, (32, 32) here; "
        "fc1.bias is (16,) there, (32,) here; fc2.weight is (4, 16) there, (4, 32) here "
        "(model.init_strict: false loads what fits)\n"
    )
    assert not (tmp_path / "ckpt" / "ft").exists()
    # init_strict: false loads what fits and lists the rest
    config["model"]["init_strict"] = False
    code, _, err = cli("train", write_config(tmp_path / "ft.yaml", config))
    assert code == 0, err
    assert "model.init_from: loaded 5 of 8 tensors; skipped: fc1.weight is (16, 32) there" in err
    ckpt = load_ckpt(tmp_path / "ckpt" / "ft" / "last.pt")
    assert ckpt["started_from"]["skipped"] == ["fc1.weight", "fc1.bias", "fc2.weight"]


def test_bad_init_from_paths(tmp_path, cli):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"format_version": 2, "model": {}, "step": -1}, tmp_path / "damaged.pt")
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": CodePayload(marker)}, tmp_path / "payload.pt")
    (tmp_path / "empty").mkdir()
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases = {
        "nothere.pt": f"{tmp_path / 'nothere.pt'} does not exist",
        "notes.txt": f"{tmp_path / 'notes.txt'} is not a checkpoint or state_dict file (",
        "empty": f"{tmp_path / 'empty'} holds no checkpoint (no best.pt or last.pt)",
        "payload.pt": f"{tmp_path / 'payload.pt'} refused: it holds Python objects beyond tensors and plain data "
        "(posix.system); trainkit only loads with weights_only=True",
        "list.pt": f"{tmp_path / 'list.pt'} is neither a trainkit checkpoint nor a state_dict",
        "damaged.pt": f"{tmp_path / 'damaged.pt'}: damaged or not a trainkit checkpoint",
    }
    for name, message in cases.items():
        config = _start_from(tmp_path, tmp_path / name)
        code, _, err = cli("train", write_config(tmp_path / "ft.yaml", config), "-q")
        assert code == 2, (name, err)
        assert err.startswith(f"error: model.init_from: {message}") and err.count("\n") == 1, (name, err)
    assert not marker.exists(), "the payload must never run"
    assert not (tmp_path / "ckpt").exists()
