"""Every command trainkit suggests works when followed: each test runs what was printed.

`N` in a suggestion is the user's number of epochs; the tests put one in.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import trainkit
from conftest import load_ckpt, tiny_config, write_config
from trainkit.errors import TrainingInterrupted
from trainkit.training.session import Session


def _suggested(text: str) -> list[str]:
    """The arguments of the command a message suggests: in backticks, or else the last
    `trainkit resume ...` up to the end of the line."""
    quoted = re.search(r"`trainkit ([^`]+)`", text)
    if quoted:
        return shlex.split(quoted.group(1))
    start = text.rfind("trainkit resume ")
    assert start >= 0, f"no command suggested in: {text!r}"
    return shlex.split(text[start:].splitlines()[0])[1:]


def _follow(cli, text: str, epochs: int) -> tuple[int, str, str]:
    args = [f"trainer.epochs={epochs}" if a == "trainer.epochs=N" else a for a in _suggested(text)]
    return cli(*args, "-q")


ONECYCLE = {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "scheduler": {"name": "onecycle"}}


@pytest.fixture(params=["onecycle", "no_schedule"])
def finished(request, tmp_path):
    extra = ONECYCLE if request.param == "onecycle" else {}
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, **extra))
    trainkit.train(str(config), quiet=True)
    return config, tmp_path / "ckpt" / "tiny"


def test_resume_of_a_complete_run_exits_0_and_its_suggestion_trains_longer(cli, finished):
    _, run = finished
    code, out, err = cli("resume", run)
    assert code == 0 and err == ""
    assert out.startswith(f"{run} is already complete (2/2 epochs); to train longer: trainkit resume {run} ")
    code, _, err = _follow(cli, out.strip(), 3)
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 3


def test_training_into_a_finished_run_suggests_a_command_that_trains_it_longer(cli, finished):
    config, run = finished
    code, _, err = cli("train", config, "-q")
    assert code == 2
    assert err.startswith(f"error: {run} already holds a complete run; to train it longer: `trainkit resume {run} ")
    assert err.rstrip().endswith("or pass --overwrite to replace it")
    code, _, err = _follow(cli, err, 4)
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 4


def test_a_stretch_refusal_suggests_a_new_schedule_that_works(cli, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, **ONECYCLE))
    trainkit.train(str(config), quiet=True)
    run = tmp_path / "ckpt" / "tiny"
    code, _, err = cli("resume", run, "trainer.epochs=3")
    assert code == 2 and "cannot be stretched; to train longer, give the added epochs a schedule" in err
    code, _, err = _follow(cli, err, 3)
    assert code == 0, err


def test_an_unfinished_one_cycle_run_is_told_to_finish_first(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == 6)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(tiny_config(tmp_path, **ONECYCLE, trainer={"epochs": 3}), quiet=True)
    monkeypatch.undo()
    run = tmp_path / "ckpt" / "tiny"
    code, _, err = cli("resume", run, "trainer.epochs=5")
    assert code == 2
    assert f"finish it first (trainkit resume {run}), then extend it: trainkit resume {run} trainer.epochs=N" in err
    assert cli("resume", run, "-q")[0] == 0  # the first suggestion
    code, _, err = _follow(cli, err, 5)  # then the second
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 5


def test_training_into_an_interrupted_run_suggests_resume(cli, tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == 3)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(str(config), quiet=True)
    monkeypatch.undo()
    run = tmp_path / "ckpt" / "tiny"
    code, _, err = cli("train", config, "-q")
    assert code == 2 and f"already holds a run; continue it with `trainkit resume {run}`" in err
    code, _, err = cli(*_suggested(err), "-q")
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 2


def test_a_run_that_stopped_early_says_why_and_how_to_train_on(cli, tmp_path):
    stop = {"metric": "val_loss", "patience": 1, "min_delta": 10.0}  # stops after epoch 2
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, trainer={"epochs": 4, "early_stopping": stop}))
    trainkit.train(str(config), quiet=True)
    run = tmp_path / "ckpt" / "tiny"
    code, out, _ = cli("resume", run)
    assert code == 0
    assert out.startswith(f"{run} is already complete (stopped early: val_loss did not improve by more than 10 on ")
    code, _, err = cli("train", config, "-q")
    assert code == 2 and "`trainkit resume" in err
    code, _, err = _follow(cli, out.strip(), 4)
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 4  # it trained the epochs it had left


def test_a_run_that_stopped_early_at_its_last_epoch_is_told_both(cli, tmp_path):
    stop = {"metric": "val_loss", "patience": 1, "min_delta": 10.0}  # stops after epoch 2, its last
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, trainer={"epochs": 2, "early_stopping": stop}))
    trainkit.train(str(config), quiet=True)
    run = tmp_path / "ckpt" / "tiny"
    code, out, _ = cli("resume", run)
    assert code == 0 and out.rstrip().endswith(f"trainkit resume {run} trainer.early_stopping=null trainer.epochs=N")
    code, _, err = cli("train", config, "-q")
    assert f"`trainkit resume {run} trainer.early_stopping=null trainer.epochs=N`" in err
    code, _, err = _follow(cli, out.strip(), 3)
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 3


def test_a_folder_without_a_checkpoint_suggests_no_resume(cli, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    run = tmp_path / "ckpt" / "tiny"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: tiny\n")  # a run that died before its first checkpoint
    code, _, err = cli("train", config, "-q")
    assert code == 2
    assert err == (
        f"error: {run} already holds a run that saved no checkpoint; choose another name (name=...), "
        "or pass --overwrite to replace it\n"
    )
    assert cli("train", config, "-q", "--overwrite")[0] == 0


def test_the_python_api_names_its_own_argument(tmp_path):
    trainkit.train(tiny_config(tmp_path, trainer={"epochs": 1}), quiet=True)
    with pytest.raises(trainkit.TrainkitError) as exc:
        trainkit.train(tiny_config(tmp_path, trainer={"epochs": 1}), quiet=True)
    assert str(exc.value).endswith("or pass overwrite=True to replace it") and "--overwrite" not in str(exc.value)
    assert exc.value.exit_code == 2


def test_resume_of_a_complete_run_through_the_api_returns_normally(tmp_path):
    result = trainkit.train(tiny_config(tmp_path, trainer={"epochs": 1}), quiet=True)
    again = trainkit.resume(result["run_dir"], quiet=True)
    assert again["already_complete"] is True and result["already_complete"] is False
    assert again["epochs"] == 1 and again["best_metric"] == result["best_metric"]
    assert again["history"] == result["history"]
    assert again["message"].startswith(f"{Path(result['run_dir'])} is already complete (1/1 epochs)")
