"""Guarantees 2-6: kill -9, SIGINT/SIGTERM, NaN, unsafe checkpoints, and bad input.

Subprocess tests start `python -m trainkit` for real and send it real signals.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import trainkit
from conftest import (
    TRAINKIT,
    CodePayload,
    assert_same_tensors,
    load_ckpt,
    make_mnist_root,
    metric_history,
    subprocess_env,
    tiny_config,
    write_config,
)

# Saves are slowed in the child so that a kill lands inside a checkpoint write on purpose:
# torch.save writes half the bytes, pauses, then writes the rest.
SLOW_SAVE_MAIN = """
import io, sys, time, torch
_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, bytes)) or not hasattr(f, "write"):
        return _save(obj, f, *args, **kwargs)
    buffer = io.BytesIO(); _save(obj, buffer, *args, **kwargs); data = buffer.getvalue()
    f.write(data[: len(data) // 2]); f.flush(); time.sleep(0.03); f.write(data[len(data) // 2:])
torch.save = slow_save
from trainkit.cli import main
sys.argv[0] = "trainkit"
main()
"""


def _kill_config(tmp_path):
    config = tiny_config(
        tmp_path,
        name="k",
        model={"dropout": 0.3},
        data={"n_train": 320, "batch_size": 16},
        checkpoint={"every_n_steps": 1},
    )
    config["trainer"].update(epochs=3, log_every=5)
    return config


def _start(args, slow=False, cwd=None):
    command = [sys.executable, "-c", SLOW_SAVE_MAIN, *args] if slow else TRAINKIT + list(args)
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=cwd
    )


def _wait_for(predicate, timeout=60.0, interval=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _in_checkpoint_write(run_dir: Path) -> bool:
    return any(run_dir.glob(".step-*.tmp-*"))


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill_ref")
    trainkit.train(_kill_config(tmp), quiet=True)
    return tmp / "ckpt" / "k"


@pytest.mark.slow
def test_sigkill_at_random_moments_never_costs_more_than_the_last_checkpoint(tmp_path, kill_reference):
    rand = random.Random(1234)
    config_file = write_config(tmp_path / "k.yaml", _kill_config(tmp_path))
    run_dir = tmp_path / "ckpt" / "k"
    kills = mid_write_kills = 0
    last_step = -1
    for _attempt in range(40):
        has_checkpoint = (run_dir / "last.pt").exists() or any(run_dir.glob("step-*.pt"))
        args = ["resume", str(run_dir), "-q"] if has_checkpoint else ["train", str(config_file), "-q", "--overwrite"]
        proc = _start(args, slow=True)
        if kills < 12:
            assert _wait_for(
                lambda p=proc: (run_dir / "status.json").exists() and p.poll() is None or p.poll() is not None
            )
            if kills % 2 == 0:  # inside a checkpoint write
                _wait_for(
                    lambda p=proc: _in_checkpoint_write(run_dir) or p.poll() is not None, timeout=30, interval=0.001
                )
                mid_write_kills += _in_checkpoint_write(run_dir)
            else:  # anywhere
                time.sleep(rand.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
        # what a kill leaves behind is always usable: the newest complete checkpoint loads
        if (run_dir / "latest.json").exists():
            json.loads((run_dir / "latest.json").read_text())
            step = load_ckpt(run_dir / "last.pt")["step"]
            assert step >= last_step  # no progress that was checkpointed is ever lost
            last_step = step
    else:
        pytest.fail("the run never completed")
    assert kills >= 10 and mid_write_kills >= 3, (kills, mid_write_kills)
    final, reference = load_ckpt(run_dir / "last.pt"), load_ckpt(kill_reference / "last.pt")
    for key in ("model", "optimizer", "state", "rng", "step", "epoch"):
        assert_same_tensors(final[key], reference[key], key)
    assert metric_history(run_dir) == metric_history(kill_reference)
    assert not list(run_dir.glob(".*tmp*"))


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_saves_stops_and_resumes_exactly(tmp_path, kill_reference, sig, code, name):
    config = _kill_config(tmp_path)
    config["checkpoint"]["every_n_steps"] = 0  # only the signal makes a mid-epoch checkpoint
    reference_config = dict(config, name="ref")
    trainkit.train(reference_config, quiet=True)
    config_file = write_config(tmp_path / "k.yaml", config)
    run_dir = tmp_path / "ckpt" / "k"
    proc = _start(["train", str(config_file)])
    assert _wait_for(
        lambda: (
            (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text() or proc.poll() is not None
        )
    )
    assert proc.poll() is None, "the run ended before the signal could be sent"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"interrupted by {name}; checkpoint saved at step" in err
    assert f"resume with: trainkit resume {run_dir}" in err
    stopped_at = load_ckpt(run_dir / "last.pt")
    assert 0 < stopped_at["step"] < 60
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    resumed = subprocess.run(
        TRAINKIT + ["resume", str(run_dir), "-q"], capture_output=True, text=True, env=subprocess_env()
    )
    assert resumed.returncode == 0, resumed.stderr
    final, reference = load_ckpt(run_dir / "last.pt"), load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(final[key], reference[key], key)
    assert metric_history(run_dir) == metric_history(tmp_path / "ckpt" / "ref")


def _step_writes(run_dir: Path) -> list[tuple[int, int]]:
    """(step, inode) of each step checkpoint being written now (a new write, a new inode)."""
    found = []
    for temp in run_dir.glob(".step-*.tmp-*"):
        try:
            found.append((int(temp.name.split("-")[1].split(".")[0]), temp.stat().st_ino))
        except (OSError, ValueError):
            pass  # renamed away between the listing and the stat
    return found


@pytest.mark.slow
def test_second_ctrl_c_while_saving_corrupts_nothing(tmp_path, kill_reference):
    config_file = write_config(tmp_path / "k.yaml", _kill_config(tmp_path))
    run_dir = tmp_path / "ckpt" / "k"
    steps_per_epoch = 20  # 320 samples / batch 16: at epoch ends the stop follows the epoch's own save
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err_out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_SAVE_MAIN, "train", str(config_file)],
            stdout=subprocess.DEVNULL,
            stderr=err_out,
            env=subprocess_env(),
        )
    try:
        # 1. the first Ctrl-C lands while a mid-epoch step checkpoint is being written
        assert _wait_for(
            lambda: any(step % steps_per_epoch for step, _ in _step_writes(run_dir)) or proc.poll() is not None,
            interval=0.001,
        )
        first = [w for w in _step_writes(run_dir) if w[0] % steps_per_epoch]
        assert proc.poll() is None and first, "the run ended before a mid-epoch checkpoint write was seen"
        proc.send_signal(signal.SIGINT)
        assert _wait_for(lambda: "SIGINT received" in err_file.read_text() or proc.poll() is not None)
        # 2. the second lands while the interrupt's own checkpoint is written (a new write: a new inode)
        assert _wait_for(
            lambda: any(w not in first for w in _step_writes(run_dir)) or proc.poll() is not None, interval=0.001
        )
        assert proc.poll() is None, "the interrupt's checkpoint write was not seen: " + err_file.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = err_file.read_text()
    assert err.count("SIGINT received: finishing this step and saving a checkpoint...") == 1, err
    assert "still saving the checkpoint; it will stop right after" in err, err
    assert "interrupted by SIGINT; checkpoint saved at step" in err, err
    assert (
        subprocess.run(TRAINKIT + ["resume", str(run_dir), "-q"], env=subprocess_env(), capture_output=True).returncode
        == 0
    )
    final, reference = load_ckpt(run_dir / "last.pt"), load_ckpt(kill_reference / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(final[key], reference[key], key)


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(cli, tmp_path):
    config = tiny_config(
        tmp_path,
        name="nan",
        model={"name": "linear_regression"},
        data={"name": "synthetic_regression", "batch_size": 50},
        optimizer={"name": "sgd", "lr": 10.0},
        checkpoint={"every_n_steps": 5},
    )
    for key in ("channels", "hidden"):
        config["model"].pop(key)
    for key in ("n_test", "size", "num_classes"):
        config["data"].pop(key)
    config["trainer"]["epochs"] = 20
    code, out, err = cli("train", write_config(tmp_path / "nan.yaml", config), "-q")
    assert code == 1
    assert err.startswith("error: loss became ")
    message = err.splitlines()[0]
    assert " at epoch " in message and ", step " in message
    assert "stopped without saving over the last good checkpoint" in message
    bad_step = int(message.split(", step ")[1].split(";")[0])
    run = tmp_path / "ckpt" / "nan"
    last = load_ckpt(run / "last.pt")
    assert last["step"] < bad_step and all(torch.isfinite(t).all() for t in last["model"].values())
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def _snapshot(root: Path):
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path):
    trainkit.train(tiny_config(tmp_path), quiet=True)
    return tmp_path / "ckpt" / "tiny"


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(cli, tmp_path, command):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "config": CodePayload(marker)}, evil)
    args = ["eval", "--ckpt", evil] if command == "eval" else ["resume", evil]
    code, _, err = cli(*args)
    assert code == 1
    assert err.startswith(f"error: {evil}: refused to load: it holds Python objects beyond tensors and plain data")
    assert not marker.exists()


@pytest.mark.parametrize(
    "case,code,message",
    [
        ("missing", 2, "checkpoint not found: {path}"),
        ("folder_without_checkpoints", 2, "{path} holds no checkpoint (no last.pt or step-*.pt)"),
        ("truncated", 1, "{path}: truncated, corrupt or not a checkpoint file"),
        ("not_a_checkpoint", 1, "{path}: truncated, corrupt or not a checkpoint file"),
        ("bare_state_dict", 1, "{path}: not a trainkit checkpoint"),
        (
            "other_architecture",
            1,
            "{path} was written by a different model architecture: fc1.weight is (16, 32) in the "
            "checkpoint but (20, 32) in the model",
        ),
        ("newer_format", 1, "{path}: written in checkpoint format 99 by a newer trainkit"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_bad_checkpoint_paths(cli, tmp_path, trained, command, case, code, message):
    path = tmp_path / "bad.pt"
    last = load_ckpt(trained / "last.pt")
    if case == "missing":
        path = tmp_path / "nothing_here.pt"
        if command == "resume":
            message = "no such run folder or checkpoint: {path}"
    elif case == "folder_without_checkpoints":
        path = tmp_path / "empty_run"
        path.mkdir()
        if command == "eval":
            message = "{path} holds no checkpoint (no best.pt or last.pt)"
    elif case == "truncated":
        path.write_bytes((trained / "last.pt").read_bytes()[:5000])
    elif case == "not_a_checkpoint":
        path.write_text("name: not a checkpoint\n")
    elif case == "bare_state_dict":
        torch.save(last["model"], path)
    elif case == "other_architecture":
        last["config"]["model"]["hidden"] = 20  # the weights say 16
        last["config"]["trainer"]["epochs"] = 3
        torch.save(last, path)
    elif case == "newer_format":
        torch.save(last | {"format_version": 99}, path)
    before = _snapshot(tmp_path)
    args = ["eval", "--ckpt", path] if command == "eval" else ["resume", path, "trainer.epochs=3"]
    got_code, _, err = cli(*args)
    assert got_code == code, err
    assert err.startswith("error: " + message.format(path=path)), err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(cli, tmp_path, monkeypatch):
    config = tiny_config(tmp_path, checkpoint={"every_n_steps": 2})
    config_file = write_config(tmp_path / "c.yaml", config)
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync_until_full(fd):
        calls["n"] += 1
        if calls["n"] > 12:  # the first saves succeed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    code, _, err = cli("train", config_file, "-q")
    monkeypatch.undo()
    assert code == 1
    assert "the disk is full; the files already there are untouched" in err
    run = tmp_path / "ckpt" / "tiny"
    good = load_ckpt(run / "last.pt")  # still loads: the failed save never replaced it
    assert good["step"] >= 2
    assert not list(run.glob(".*tmp*"))
    code, _, err = cli("resume", run, "-q")
    assert code == 0, err


def test_missing_dataset_files_with_no_network(cli, tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading:\n<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    config = tiny_config(tmp_path)
    config["data"] = {"name": "mnist", "root": str(tmp_path / "data"), "download": True}
    config_file = write_config(tmp_path / "m.yaml", config)
    before = _snapshot(tmp_path)
    code, _, err = cli("train", config_file, "-q")
    assert code == 1
    assert err.startswith("error: mnist: files not found: expected train-images-idx3-ubyte")
    assert err.strip().endswith("the download failed (<urlopen error [Errno -3] Temporary failure in name resolution>)")
    assert _snapshot(tmp_path) == before


def test_truncated_dataset_file(cli, tmp_path):
    make_mnist_root(tmp_path / "data")
    labels = tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])
    config = tiny_config(tmp_path)
    config["data"] = {"name": "mnist", "root": str(tmp_path / "data"), "download": False}
    code, _, err = cli("train", write_config(tmp_path / "m.yaml", config), "-q")
    assert code == 1
    assert err.startswith(f"error: {labels}: cannot read")
    assert not (tmp_path / "ckpt").exists()


def test_resume_skips_a_corrupt_newest_checkpoint_and_keeps_it_aside(cli, tmp_path, monkeypatch):
    from trainkit.errors import TrainingInterrupted
    from trainkit.training.session import Session

    reference = tiny_config(tmp_path, name="ref", checkpoint={"every_n_steps": 2, "keep_last": 3})
    trainkit.train(reference, quiet=True)
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == 5)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(dict(reference, name="run"), quiet=True)
    monkeypatch.undo()
    run = tmp_path / "ckpt" / "run"
    newest = run / "step-000000005.pt"
    newest.write_bytes(newest.read_bytes()[:2000])  # damaged in place (last.pt is the same file)
    code, _, err = cli("resume", run, "-q")
    assert code == 0, err
    assert f"warning: {newest}: truncated, corrupt or not a checkpoint file" in err
    assert "using the previous good checkpoint step-000000004.pt instead" in err
    assert (run / "step-000000005.pt.corrupt").exists()
    final, expected = load_ckpt(run / "last.pt"), load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(final[key], expected[key], key)
    assert metric_history(run) == metric_history(tmp_path / "ckpt" / "ref")
