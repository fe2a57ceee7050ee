"""`trainkit runs`: the table and JSON of run folders, including runs killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import TRAINKIT, subprocess_env, tiny_config, write_config
from helpers_ecosystem import train_tiny
from trainkit.runfolder.runlog import read_status, write_status


def _runs_json(cli, directory):
    code, out, err = cli("runs", directory, "--json")
    assert code == 0, err
    return {run["name"]: run for run in json.loads(out)}


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_complete_run_in_table_and_json(cli, tmp_path):
    result = train_tiny(tmp_path)
    code, out, err = cli("runs", tmp_path / "ckpt")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["name", "model", "dataset", "epochs", "best", "status", "updated"]
    best = f"val_accuracy {result['best_metric']:.4f}"
    assert row.split()[:5] == ["tiny", "cnn", "synthetic_images", "2/2", "val_accuracy"]
    assert best in row and "complete" in row
    assert time.strftime("%Y-%m-%d") in row

    run = _runs_json(cli, tmp_path / "ckpt")["tiny"]
    assert run["status"] == "complete" and run["epochs_done"] == 2 and run["epochs"] == 2
    assert run["best_metric"] == result["best_metric"] and run["monitor"] == "val_accuracy"
    assert run["model"] == "cnn" and run["dataset"] == "synthetic_images"
    assert run["step"] == result["step"] and abs(run["updated"] - time.time()) < 600


def test_a_hand_edited_config_or_an_odd_folder_name_is_still_one_row(cli, tmp_path):
    """What is on disk is whatever a user left there: a model named 5 in config.yaml, a folder
    name holding a newline. Each is still one row of the table, not a traceback."""
    import shutil

    run_dir = train_tiny(tmp_path)["run_dir"]
    odd = tmp_path / "ckpt" / "odd\nname"
    shutil.copytree(run_dir, odd)
    config = (odd / "config.yaml").read_text()
    (odd / "config.yaml").write_text(
        config.replace("name: cnn", "name: 5").replace("name: synthetic_images", 'name: "a\\x1bb"')
    )
    code, out, err = cli("runs", tmp_path / "ckpt")
    assert code == 0, err
    rows = sorted(out.splitlines()[1:])
    assert [row.split()[:3] for row in rows] == [["odd\\nname", "5", "a\\x1bb"], ["tiny", "cnn", "synthetic_images"]]


def test_default_dir_is_checkpoints_and_runs_are_sorted_newest_first(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tmp_path, checkpoint={"dir": "checkpoints"}, name="older")
    train_tiny(tmp_path, ["trainer.epochs=1"], checkpoint={"dir": "checkpoints"}, name="newer")
    code, out, err = cli("runs")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["newer", "older"]
    assert "1/1" in out.splitlines()[1]


def test_running_status_of_a_dead_process_is_interrupted(cli, tmp_path):
    run_dir = train_tiny(tmp_path)["run_dir"]
    info = {k: v for k, v in read_status(run_dir).items() if k not in ("status", "pid", "updated")}
    write_status(run_dir, "running", **info)  # this process: alive
    assert _runs_json(cli, tmp_path / "ckpt")["tiny"]["status"] == "running"

    status = read_status(run_dir)
    status["pid"] = _dead_pid()
    (tmp_path / "ckpt" / "tiny" / "status.json").write_text(json.dumps(status))
    assert _runs_json(cli, tmp_path / "ckpt")["tiny"]["status"] == "interrupted"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_run_killed_with_sigkill_shows_interrupted(cli, tmp_path):
    config = tiny_config(
        tmp_path,
        name="killed",
        trainer={"epochs": 500, "log_every": 1},
        checkpoint={"dir": str(tmp_path / "ckpt"), "every_n_steps": 2},
    )
    path = write_config(tmp_path / "killed.yaml", config)
    proc = subprocess.Popen(
        [*TRAINKIT, "train", str(path), "--quiet"],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    status_file = tmp_path / "ckpt" / "killed" / "status.json"
    try:
        deadline = time.time() + 120
        while not (status_file.exists() and read_status(status_file.parent).get("epoch", 0) >= 1):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "training did not get going"
            time.sleep(0.1)
        assert _runs_json(cli, tmp_path / "ckpt")["killed"]["status"] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    run = _runs_json(cli, tmp_path / "ckpt")["killed"]
    assert read_status(status_file.parent)["status"] == "running"  # nobody could update it
    assert run["status"] == "interrupted"
    assert 1 <= run["epochs_done"] < 500 and run["epochs"] == 500
    code, out, _ = cli("runs", tmp_path / "ckpt")
    assert "interrupted" in out and "/500" in out


def test_failed_run_shows_failed_with_its_message(cli, tmp_path):
    import trainkit
    from trainkit.errors import NonFiniteLossError

    config = tiny_config(tmp_path, name="diverged", optimizer={"name": "sgd", "lr": 1e30})
    with pytest.raises(NonFiniteLossError):
        trainkit.train(config, quiet=True)
    run = _runs_json(cli, tmp_path / "ckpt")["diverged"]
    assert run["status"] == "failed"
    assert "loss became" in run["message"]
    assert "failed" in cli("runs", tmp_path / "ckpt")[1]


def test_one_run_folder_and_damaged_files(cli, tmp_path):
    run_dir = train_tiny(tmp_path)["run_dir"]
    # DIR may be a run folder itself
    assert list(_runs_json(cli, run_dir)) == ["tiny"]
    # a folder with only a half-written status and no config is still listed, with unknowns
    odd = tmp_path / "ckpt" / "odd"
    odd.mkdir()
    (odd / "status.json").write_text("{not json")
    runs = _runs_json(cli, tmp_path / "ckpt")
    assert runs["odd"]["status"] == "unknown" and runs["odd"]["model"] is None
    assert runs["tiny"]["status"] == "complete"
    # folders that are not runs are ignored
    (tmp_path / "ckpt" / "notes").mkdir()
    assert "notes" not in _runs_json(cli, tmp_path / "ckpt")


def test_missing_dir_exits_2_and_empty_dir_says_so(cli, tmp_path):
    code, out, err = cli("runs", tmp_path / "nowhere")
    assert code == 2 and out == ""
    assert err.strip() == f"error: no such folder: {tmp_path / 'nowhere'}"
    code, out, err = cli("runs", tmp_path)
    assert code == 0 and out == "" and f"no runs in {tmp_path}" in err
    code, out, _ = cli("runs", tmp_path, "--json")
    assert code == 0 and json.loads(out) == []


def test_runs_lists_without_importing_torch(tmp_path):
    run_dir = tmp_path / "ckpt" / "fake"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: fake\nmodel: {name: mlp}\ndata: {name: mnist}\n")
    write_status(run_dir, "complete", epoch=1, epochs=1, step=3, best_metric=0.5, monitor="val_accuracy")
    code = (
        "import sys; from trainkit.cli import app\n"
        "try:\n    app(['runs', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'runs imported torch'\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "fake" in out.stdout and "complete" in out.stdout
