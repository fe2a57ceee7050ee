"""train -> eval -> resume through the command line, and the commands' contracts."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from conftest import REPO, TRAINKIT, assert_same_tensors, load_ckpt, subprocess_env, tiny_config, write_config


@pytest.fixture
def config_file(tmp_path):
    return write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path))


def test_train_eval_resume(cli, tmp_path, config_file):
    code, out, err = cli("train", config_file, "--quiet")
    assert code == 0, err
    run = tmp_path / "ckpt" / "tiny"
    assert out.startswith("trained 2 epochs, 12 steps; best val_accuracy ") and str(run) in out
    assert err == ""

    code, out, err = cli("eval", "--ckpt", run / "best.pt", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"split", "samples", "loss", "accuracy"}
    assert result["split"] == "test" and result["samples"] == 40
    best = load_ckpt(run / "best.pt")["best_metric"]
    assert result["accuracy"] == pytest.approx(best)

    code, out, _ = cli("eval", "--ckpt", run, "--split", "train")
    assert code == 0 and out.startswith("train: samples 96  loss ")

    code, _, err = cli("resume", run, "trainer.epochs=3", "--quiet")
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 3


def test_resume_last_pt_of_2_epochs_to_4_equals_a_straight_4_epoch_run(cli, tmp_path):
    config = tiny_config(tmp_path, model={"dropout": 0.25})
    two = write_config(tmp_path / "two.yaml", config | {"name": "two"})
    four = write_config(
        tmp_path / "four.yaml", config | {"name": "four", "trainer": {**config["trainer"], "epochs": 4}}
    )
    assert cli("train", two, "-q")[0] == 0
    assert cli("resume", tmp_path / "ckpt" / "two" / "last.pt", "trainer.epochs=4", "-q")[0] == 0
    assert cli("train", four, "-q")[0] == 0
    a, b = load_ckpt(tmp_path / "ckpt" / "two" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "four" / "last.pt")
    for key in ("model", "optimizer", "state", "rng", "step", "epoch"):
        assert_same_tensors(a[key], b[key], key)


def test_training_into_an_existing_run_is_refused_then_overwritten_on_request(cli, tmp_path, config_file):
    assert cli("train", config_file, "-q")[0] == 0
    run = tmp_path / "ckpt" / "tiny"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, err = cli("train", config_file, "-q")
    assert code == 2
    assert err == (
        f"error: {run} already holds a complete run; to train it longer: `trainkit resume {run} trainer.epochs=N`, "
        "choose another name (name=...), or pass --overwrite to replace it\n"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    code, _, _ = cli("train", config_file, "-q", "--overwrite", "seed=1")
    assert code == 0
    assert load_ckpt(run / "last.pt")["config"]["seed"] == 1


def test_overwrite_with_a_bad_config_keeps_the_old_run(cli, tmp_path, config_file):
    assert cli("train", config_file, "-q")[0] == 0
    run = tmp_path / "ckpt" / "tiny"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert cli("train", config_file, "-q", "--overwrite", "optimizer.lr=-1")[0] == 2
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_of_a_complete_run_says_so_and_how_to_extend_it(cli, tmp_path, config_file):
    cli("train", config_file, "-q")
    run = tmp_path / "ckpt" / "tiny"
    code, out, err = cli("resume", run)
    assert code == 0 and err == ""
    assert out == f"{run} is already complete (2/2 epochs); to train longer: trainkit resume {run} trainer.epochs=N\n"


def test_resume_and_eval_cannot_change_what_the_run_is(cli, tmp_path, config_file):
    cli("train", config_file, "-q")
    run = tmp_path / "ckpt" / "tiny"
    code, _, err = cli("resume", run, "trainer.epochs=3", "model.hidden=32", "seed=5")
    assert code == 2
    assert "seed, model.hidden: cannot be changed for the run in" in err
    code, _, err = cli("eval", "--ckpt", run / "best.pt", "data.n_test=10")
    assert code == 2 and "data.n_test: cannot be changed" in err


def test_eval_overrides_of_data_root_are_allowed(cli, tmp_path):
    from conftest import make_mnist_root

    make_mnist_root(tmp_path / "data1")
    config = tiny_config(tmp_path)
    config["model"] = {"name": "mlp", "hidden": [8]}
    config["data"] = {"name": "mnist", "root": str(tmp_path / "data1"), "download": False, "batch_size": 16}
    assert cli("train", write_config(tmp_path / "m.yaml", config), "-q")[0] == 0
    moved = tmp_path / "data2"
    (tmp_path / "data1").rename(moved)
    ckpt = tmp_path / "ckpt" / "tiny" / "last.pt"
    code, _, err = cli("eval", "--ckpt", ckpt)
    assert code == 1 and "mnist: files not found" in err and str(tmp_path / "data1") in err
    code, out, err = cli("eval", "--ckpt", ckpt, f"data.root={moved}", "--json")
    assert code == 0 and json.loads(out)["samples"] == 32


def test_linear_regression_config_learns_y_equals_2x(cli, tmp_path):
    code, out, err = cli("train", REPO / "configs" / "linear_regression.yaml", f"checkpoint.dir={tmp_path}", "-q")
    assert code == 0, err
    ckpt = load_ckpt(tmp_path / "linear_regression" / "best.pt")
    assert ckpt["model"]["weight"].item() == pytest.approx(2.0, abs=0.01)
    assert ckpt["model"]["bias"].item() == pytest.approx(0.0, abs=0.01)
    code, out, _ = cli("eval", "--ckpt", tmp_path / "linear_regression" / "best.pt", "--json")
    metrics = json.loads(out)
    assert set(metrics) == {"split", "samples", "loss", "mse", "mae", "r2"} and metrics["mse"] < 1e-3


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate_and_open_with_their_command(cli, path):
    code, _, err = cli("validate", path)
    assert code == 0, err
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# yaml-language-server: $schema=")
    assert lines[1].startswith(f"# trainkit train configs/{path.name}")


def test_ls_lists_every_registry(cli):
    code, out, _ = cli("ls")
    assert code == 0
    for name in (
        "models:",
        "cnn",
        "linear_regression",
        "datasets:",
        "cifar10",
        "optimizers:",
        "adadelta",
        "schedulers:",
        "onecycle",
        "options: lr, momentum=0.0",
    ):
        assert name in out, name
    code, out, _ = cli("ls", "optimizers")
    assert "models:" not in out and "sgd" in out
    code, _, err = cli("ls", "widgets")
    assert code == 2 and "unknown kind 'widgets'" in err


def test_an_eof_error_is_a_traceback_not_clicks_aborted(cli, tmp_path, monkeypatch):
    """Click prints a bare "Aborted!" for an EOFError; from a reader it is an unexpected failure."""
    import trainkit.config

    def empty_file(*args, **kwargs):
        raise EOFError("No data left in file")

    monkeypatch.setattr(trainkit.config, "load_config", empty_file)
    with pytest.raises(RuntimeError, match="unexpected end of data: No data left in file") as info:
        cli("validate", write_config(tmp_path / "c.yaml", tiny_config(tmp_path)))
    assert isinstance(info.value.__cause__, EOFError)


def test_python_dash_m_and_help_do_not_import_torch():
    env = subprocess_env()
    out = subprocess.run(TRAINKIT + ["--version"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.startswith("trainkit 0.")
    probe = (
        "import sys; from trainkit.cli import app; from typer.testing import CliRunner; "
        "r = CliRunner().invoke(app, ['train', '--help']); "
        "print(r.exit_code, 'torch' in sys.modules)"
    )
    out = subprocess.run([TRAINKIT[0], "-c", probe], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["0", "False"], out.stderr


# The end of a `trainkit` process (cli._leave): exit handlers run, buffered output is
# flushed, a running non-daemon thread is waited for, and the interpreter's teardown is
# skipped (a module-level object's __del__, which that teardown would call, never runs).
LEAVE_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
from trainkit.cli import _leave
class Teardown:
    def __del__(self):
        print("teardown ran")
marker = Teardown()
atexit.register(lambda: print("exit handler ran"))
if sys.argv[2] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), Path(sys.argv[1]).write_text("done"))).start()
print("buffered line")
_leave(sys.argv[3] if sys.argv[3] == "message" else int(sys.argv[3]))
"""


def _leave_probe(tmp_path, thread, code):
    env = subprocess_env()
    env.pop("PYTHONUNBUFFERED")  # stdout to a pipe is then block-buffered: only a flush shows it
    args = [str(tmp_path / "thread.txt"), thread, code]
    return subprocess.run([TRAINKIT[0], "-c", LEAVE_PROBE, *args], capture_output=True, text=True, env=env)


def test_the_command_ends_without_teardown_but_with_exit_handlers_and_flushed_output(tmp_path):
    done = _leave_probe(tmp_path, "none", "3")
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["buffered line", "exit handler ran"]


def test_the_command_waits_for_a_running_thread_and_passes_a_message_on(tmp_path):
    done = _leave_probe(tmp_path, "thread", "0")
    assert done.returncode == 0 and (tmp_path / "thread.txt").read_text() == "done"
    assert "exit handler ran" in done.stdout
    done = _leave_probe(tmp_path, "none", "message")
    assert done.returncode == 1 and done.stderr.strip() == "message"


def test_unwritable_checkpoint_folder_fails_before_training(cli, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the checkpoint folder should go")
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, checkpoint={"dir": str(blocker)}))
    code, _, err = cli("train", path, "-q")
    assert code == 1
    assert err.startswith(f"error: cannot create run folder {blocker}/tiny:")
    assert blocker.read_text() == "a file where the checkpoint folder should go"


def test_checkpoint_from_cuda_like_device_loads_on_cpu(tmp_path):
    """Tensors are saved on the CPU whatever the device; map_location is never needed."""
    import trainkit

    trainkit.train(tiny_config(tmp_path), quiet=True)
    ckpt = load_ckpt(tmp_path / "ckpt" / "tiny" / "last.pt")
    tensors = [t for t in ckpt["model"].values()] + [
        t for state in ckpt["optimizer"]["state"].values() for t in state.values() if isinstance(t, torch.Tensor)
    ]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


def test_a_checkpoint_trained_on_cuda_evaluates_on_a_cpu_only_machine(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    import trainkit

    trainkit.train(tiny_config(tmp_path), quiet=True)
    ckpt = load_ckpt(tmp_path / "ckpt" / "tiny" / "best.pt")
    ckpt["config"]["trainer"]["device"] = "cuda"  # as if trained with --device cuda
    ckpt["config"]["trainer"]["precision"] = "fp16"  # in fp16, which the CPU does not offer: eval uses fp32
    torch.save(ckpt, tmp_path / "from_gpu.pt")
    code, out, err = cli("eval", "--ckpt", tmp_path / "from_gpu.pt", "--json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(ckpt["best_metric"])
    code, _, err = cli("eval", "--ckpt", tmp_path / "from_gpu.pt", "--device", "cuda")
    assert code == 2 and "'cuda' was asked for, but this machine has no CUDA device" in err
