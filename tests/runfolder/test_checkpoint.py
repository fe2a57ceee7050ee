"""Checkpoint files: atomic writes, safe loads, the run folder's rotation and fallbacks."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import trainkit
from conftest import CodePayload, load_ckpt, tiny_config
from trainkit.errors import CheckpointError, CheckpointNotFoundError
from trainkit.runfolder.checkpoint import FORMAT_VERSION, Checkpoint, atomic_save, load_checkpoint
from trainkit.runfolder.folder import RunFolder, open_for_resume


def _fake_ckpt(step, epoch=0):
    return {
        "format_version": FORMAT_VERSION,
        "model": {"w": torch.full((2,), float(step))},
        "step": step,
        "epoch": epoch,
    }


def _checkpoint(step, epoch=0):
    return Checkpoint.from_dict(_fake_ckpt(step, epoch))


def test_a_trained_checkpoint_is_plain_data_loadable_by_plain_torch(tmp_path):
    result = trainkit.train(tiny_config(tmp_path), quiet=True)
    ckpt = torch.load(result["best_checkpoint"], weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "best_metric",
        "rng",
        "config",
        "versions",
        "data_info",
        "plugins",
        "format_version",
    ):
        assert key in ckpt, key
    model = trainkit.MODELS.build("cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 8, 8), num_classes=4)
    model.load_state_dict(ckpt["model"])  # a plain state_dict: no 'module.' or '_orig_mod.' prefixes
    assert ckpt["config"]["model"] == {"name": "cnn", "channels": [4, 8], "hidden": 16, "dropout": 0.0}
    assert ckpt["versions"]["torch"] == str(torch.__version__) and ckpt["epoch"] == 2
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())


def test_run_folder_layout(tmp_path):
    trainkit.train(tiny_config(tmp_path, checkpoint={"every_n_steps": 4}), quiet=True)
    run = tmp_path / "ckpt" / "tiny"
    names = sorted(p.name for p in run.iterdir())
    assert names == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "latest.json",
        "metrics.jsonl",
        "status.json",
        "step-000000008.pt",
        "step-000000012.pt",
    ]
    assert os.path.samefile(run / "last.pt", run / "step-000000012.pt")  # a hard link, not a second copy
    pointer = json.loads((run / "latest.json").read_text())
    assert pointer == {
        "checkpoint": "step-000000012.pt",
        "step": 12,
        "epoch": 2,
        "bytes": (run / "last.pt").stat().st_size,
    }
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records].count("epoch") == 2
    assert [r["step"] for r in records if r["type"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert all("lr" in r and "loss" in r for r in records if r["type"] == "train")


def test_atomic_save_failure_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"v": 1}, target)
    before = target.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(
        CheckpointError, match=f"could not write {target}: the disk is full; the files already there are untouched"
    ):
        atomic_save({"v": 2}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_refuses_pickle_payloads_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "x": CodePayload(marker)}, evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    assert str(info.value).startswith(f"{evil}: refused to load: it holds Python objects beyond tensors and plain data")
    assert "weights_only=True" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "truncated, corrupt or not a checkpoint file"),
        (b"this is not a checkpoint", "truncated, corrupt or not a checkpoint file"),
    ],
)
def test_load_of_garbage(tmp_path, content, message):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save(_fake_ckpt(1), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=f"^{path}: truncated, corrupt or not a checkpoint file"):
        load_checkpoint(path)


def test_bare_state_dict_is_not_a_trainkit_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a trainkit checkpoint"):
        load_checkpoint(path)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save(_fake_ckpt(1) | {"format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1} by a newer trainkit"):
        load_checkpoint(path)


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointNotFoundError, match="no such run folder or checkpoint"):
        open_for_resume(tmp_path / "nope")
    with pytest.raises(CheckpointNotFoundError, match="holds no checkpoint"):
        open_for_resume(tmp_path)


def test_rotation_keeps_the_previous_checkpoint_until_the_new_one_is_complete(tmp_path):
    folder = RunFolder(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        folder.save(_checkpoint(step), is_best=(step == 2))
    assert [s for s, _ in folder.step_files()] == [2, 3]
    assert load_ckpt(folder.best)["step"] == 2  # best.pt survives the pruning of its step file
    assert load_ckpt(folder.last)["step"] == 3


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, caplog):
    folder = RunFolder(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        folder.save(_checkpoint(step), is_best=False)
    newest = tmp_path / "step-000000003.pt"
    data = newest.read_bytes()
    with open(newest, "r+b") as f:  # damage in place: last.pt is the same file
        f.truncate(len(data) // 2)
    path, ckpt, skipped = folder.load_latest()
    assert path.name == "step-000000002.pt" and ckpt.step == 2
    assert newest in skipped
    assert "step-000000003.pt: truncated, corrupt or not a checkpoint file" in caplog.text
    assert "using the previous good checkpoint step-000000002.pt instead" in caplog.text


def test_a_save_killed_before_the_pointer_update_is_still_found(tmp_path):
    folder = RunFolder(tmp_path)
    folder.save(_checkpoint(1), is_best=False)
    atomic_save(_fake_ckpt(2), tmp_path / "step-000000002.pt")  # renamed into place, then killed
    path, ckpt, _ = folder.load_latest()
    assert ckpt.step == 2


def test_stale_temp_files_are_ignored_and_cleaned(tmp_path):
    folder = RunFolder(tmp_path)
    folder.save(_checkpoint(1), is_best=False)
    (tmp_path / ".step-000000002.pt.tmp-999").write_bytes(b"half a checkpoint")
    assert folder.load_latest()[1].step == 1
    folder.remove_stale_temps()
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_format_1_checkpoint_is_migrated_on_load(tmp_path):
    """Format 1 (before data sets had a record) still loads, resumes and evaluates."""
    result = trainkit.train(tiny_config(tmp_path, trainer={"epochs": 1}), quiet=True)
    old = load_ckpt(result["last_checkpoint"])
    old.pop("data_record")
    old["format_version"] = 1
    torch.save(old, result["last_checkpoint"])
    checkpoint = load_checkpoint(result["last_checkpoint"])
    assert checkpoint.format_version == FORMAT_VERSION and checkpoint.data_record is None
    trainkit.resume(result["run_dir"], ["trainer.epochs=2"], quiet=True)
    assert load_ckpt(tmp_path / "ckpt" / "tiny" / "last.pt")["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize(
    "change,message",
    [
        ({"step": "12"}, "'step' is str, expected int"),
        ({"epoch": -1}, "'epoch' is negative"),
        ({"model": [1, 2]}, "'model' is list, expected dict"),
        ({"is_best": 1}, "'is_best' is int, expected bool"),
        ({"step": True}, "'step' is bool, expected int"),
    ],
)
def test_fields_of_the_wrong_type_are_one_clear_error(tmp_path, change, message):
    path = tmp_path / "bad.pt"
    torch.save(_fake_ckpt(3) | change, path)
    with pytest.raises(CheckpointError, match=f"damaged or not a trainkit checkpoint: {message}"):
        load_checkpoint(path)
