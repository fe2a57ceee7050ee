"""A damaged checkpoint's optimizer, scheduler and data set state: named before training starts.

(Found by the checkpoint fuzzer: each of these loaded, then failed in the first step or in
predict with a traceback from deep inside torch.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trainkit
from conftest import load_ckpt, tiny_config
from trainkit.errors import TrainingInterrupted
from trainkit.training.session import Session


@pytest.fixture(scope="module")
def midrun(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("statecheck")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Session, "stop_requested", lambda self, state: state.step == 3)
        with pytest.raises(TrainingInterrupted):
            trainkit.train(tiny_config(tmp, scheduler={"name": "cosine"}), quiet=True)
    return tmp / "ckpt" / "tiny" / "last.pt"


def _damaged(midrun: Path, tmp_path: Path, damage) -> Path:
    checkpoint = load_ckpt(midrun)
    damage(checkpoint)
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    return path


def _exp_avg_scalar(c):
    c["optimizer"]["state"][0]["exp_avg"] = torch.tensor(0.0)


def _exp_avg_missing(c):
    del c["optimizer"]["state"][1]["exp_avg"]


def _momentum_list(c):
    c["optimizer"]["state"][0]["exp_avg_sq"] = [0.0] * 4


def _lr_text(c):
    c["optimizer"]["param_groups"][0]["lr"] = "fast"


def _step_text(c):
    c["optimizer"]["state"][0]["step"] = "one"


def _scheduler_epoch(c):
    c["scheduler"]["last_epoch"] = [3]


@pytest.mark.parametrize(
    "damage,problem",
    [
        (
            _exp_avg_scalar,
            "optimizer state 'exp_avg' of param 0.0 is a float32 tensor of shape (), the parameter is (4, 1, 3, 3)",
        ),
        (_exp_avg_missing, "optimizer state of param 0.1 lacks exp_avg"),
        (_momentum_list, "optimizer state 'exp_avg_sq' of param 0.0 is a list, the parameter is (4, 1, 3, 3)"),
        (_lr_text, "param_groups[0].lr is text ('fast'), not a number"),
        (_step_text, "optimizer state 'step' of param 0.0 is text, not a number"),
        (_scheduler_epoch, "scheduler.last_epoch is a list ([3]), not a number"),
    ],
)
def test_resume_names_state_that_does_not_fit(cli, midrun, tmp_path, damage, problem):
    path = _damaged(midrun, tmp_path, damage)
    code, out, err = cli("resume", path, "-q")
    assert (code, out) == (1, "")
    assert err == f"error: {path}: optimizer or scheduler state does not fit this run: {problem}\n"


@pytest.mark.parametrize(
    "key,value,problem",
    [
        ("input_shape", [0, 8, 8], "input_shape is [0, 8, 8], not a list of sizes"),
        ("input_shape", 8, "input_shape is 8, not a list of sizes"),
        ("class_names", ["a"], "class_names is not one name per class"),
        ("mean", [0.5, 0.5], "mean is not one finite number per channel"),
        ("std", [0.0], "std is not one finite number per channel"),
        ("task", "ranking", "task is 'ranking'"),
    ],
)
def test_predict_names_a_damaged_data_set_description(cli, midrun, tmp_path, key, value, problem):
    path = _damaged(midrun, tmp_path, lambda c: c["data_info"].__setitem__(key, value))
    code, out, err = cli("predict", "--ckpt", path, tmp_path / "any.png")
    assert (code, out) == (1, "")
    assert err == f"error: {path}: damaged data set description (data_info): {problem}\n"
