"""What a resume changes is what training does, and what the record says.

Overrides of optimizer options apply to every param group from the next step on (the
scheduler's base learning rates follow), metrics.jsonl says at which step, and the recorded
config equals the optimizer's real state; a change that cannot be applied exactly is refused
with exit 2. An explicit scheduler.name=... gives the epochs still to train a new schedule,
leaving the steps already taken as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import trainkit
from conftest import assert_same_tensors, load_ckpt, tiny_config, write_config
from trainkit.errors import TrainingInterrupted
from trainkit.training.session import Session

SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def _hyperparameters(ckpt: dict) -> list[dict]:
    return [{k: v for k, v in group.items() if k != "params"} for group in ckpt["optimizer"]["param_groups"]]


def _interrupt_at(monkeypatch, step):
    monkeypatch.setattr(Session, "stop_requested", lambda self, state: state.step == step)


def test_optimizer_overrides_on_resume_are_what_the_optimizer_uses_and_records(tmp_path):
    run = Path(trainkit.train(tiny_config(tmp_path, optimizer=SGD, trainer={"epochs": 1}), quiet=True)["run_dir"])
    trainkit.resume(run, ["optimizer.lr=0.01", "optimizer.momentum=0.5", "trainer.epochs=2"], quiet=True)

    ckpt = load_ckpt(run / "last.pt")
    recorded = yaml.safe_load((run / "config.yaml").read_text())["optimizer"]
    assert recorded == ckpt["config"]["optimizer"]
    for group in _hyperparameters(ckpt):  # the record is what the optimizer really holds
        assert group["lr"] == recorded["lr"] == 0.01
        assert group["momentum"] == recorded["momentum"] == 0.5
    assert all(state["momentum_buffer"] is not None for state in ckpt["optimizer"]["state"].values())  # kept
    # the change is in metrics.jsonl at the step it took effect; every step after it used it
    (change,) = _records(run, "change")
    assert change["step"] == 6 and change["epoch"] == 2 and change["lr"] == 0.01
    assert change["changes"]["optimizer.lr"] == [0.05, 0.01]
    assert change["changes"]["optimizer.momentum"] == [0.9, 0.5]
    lrs = {r["step"]: r["lr"] for r in _records(run, "train")}
    assert all(lr == 0.05 for step, lr in lrs.items() if step <= 6)
    assert all(lr == 0.01 for step, lr in lrs.items() if step > 6) and max(lrs) == 12


def test_momentum_can_be_turned_on_where_the_optimizer_starts_its_buffers_itself(tmp_path):
    config = tiny_config(tmp_path, optimizer={"name": "sgd", "lr": 0.05}, trainer={"epochs": 1})
    run = Path(trainkit.train(config, quiet=True)["run_dir"])
    trainkit.resume(run, ["optimizer.momentum=0.9", "trainer.epochs=2"], quiet=True)
    ckpt = load_ckpt(run / "last.pt")
    assert _hyperparameters(ckpt)[0]["momentum"] == 0.9
    assert all("momentum_buffer" in state for state in ckpt["optimizer"]["state"].values())


def test_a_resume_without_changes_writes_no_change_record(tmp_path):
    run = Path(trainkit.train(tiny_config(tmp_path, trainer={"epochs": 1}), quiet=True)["run_dir"])
    trainkit.resume(run, ["trainer.epochs=2"], quiet=True)
    assert _records(run, "change") == []


def test_lr_change_under_a_step_schedule_moves_its_base_lr(tmp_path):
    """Resumed with lr=0.02, a step schedule continues from 0.02 x gamma^k: from the step of the
    change on, the run is where a run started with lr=0.02 would be."""
    step = {"name": "step", "step_size": 1, "gamma": 0.5}
    changed = tiny_config(tmp_path, name="changed", optimizer={"lr": 0.1}, scheduler=step, trainer={"epochs": 1})
    trainkit.train(changed, quiet=True)
    trainkit.resume(tmp_path / "ckpt" / "changed", ["optimizer.lr=0.02", "trainer.epochs=3"], quiet=True)
    straight = tiny_config(tmp_path, name="straight", optimizer={"lr": 0.02}, scheduler=step, trainer={"epochs": 3})
    trainkit.train(straight, quiet=True)

    a, b = load_ckpt(tmp_path / "ckpt" / "changed" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "straight" / "last.pt")
    assert a["scheduler"]["base_lrs"] == [0.02]
    assert_same_tensors(a["scheduler"], b["scheduler"], "scheduler")
    assert _hyperparameters(a) == _hyperparameters(b)
    lr_a = {r["step"]: r["lr"] for r in _records(tmp_path / "ckpt" / "changed", "train")}
    lr_b = {r["step"]: r["lr"] for r in _records(tmp_path / "ckpt" / "straight", "train")}
    assert {s: v for s, v in lr_a.items() if s > 6} == {s: v for s, v in lr_b.items() if s > 6}
    assert lr_a[6] == 0.1 * 0.5 and lr_b[6] == 0.02 * 0.5  # the first epoch keeps what it trained with


def test_lr_change_under_one_cycle_continues_the_cycle_of_the_new_lr(tmp_path, monkeypatch):
    """One-cycle plans from max_lr (the optimizer's lr when unset): after the change the run's
    learning rates, momenta and scheduler state are those of a run started with the new lr."""
    config = {"optimizer": SGD, "scheduler": {"name": "onecycle"}, "trainer": {"epochs": 3}}
    _interrupt_at(monkeypatch, 6)
    with pytest.raises(TrainingInterrupted):
        trainkit.train(tiny_config(tmp_path, name="changed", **config), quiet=True)
    monkeypatch.undo()
    trainkit.resume(tmp_path / "ckpt" / "changed", ["optimizer.lr=0.02"], quiet=True)
    straight = tiny_config(tmp_path, name="straight", **config)
    straight["optimizer"] = {**SGD, "lr": 0.02}
    trainkit.train(straight, quiet=True)

    a, b = load_ckpt(tmp_path / "ckpt" / "changed" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "straight" / "last.pt")
    assert _hyperparameters(a) == _hyperparameters(b)
    assert_same_tensors(a["scheduler"], b["scheduler"], "scheduler")
    lr_a = [r["lr"] for r in _records(tmp_path / "ckpt" / "changed", "train") if r["step"] > 6]
    lr_b = [r["lr"] for r in _records(tmp_path / "ckpt" / "straight", "train") if r["step"] > 6]
    assert lr_a == lr_b


def test_scheduler_option_overrides_on_resume_are_applied(tmp_path):
    config = tiny_config(tmp_path, scheduler={"name": "step", "gamma": 0.5}, trainer={"epochs": 1})
    run = Path(trainkit.train(config, quiet=True)["run_dir"])
    trainkit.resume(run, ["scheduler.gamma=0.1", "trainer.epochs=2"], quiet=True)
    ckpt = load_ckpt(run / "last.pt")
    assert ckpt["config"]["scheduler"]["gamma"] == ckpt["scheduler"]["gamma"] == 0.1
    assert _records(run, "change")[0]["changes"] == {"scheduler.gamma": [0.5, 0.1], "trainer.epochs": [1, 2]}


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "optimizer.amsgrad=true",
            "optimizer.amsgrad: optimizer 'adam' would need per-parameter state the checkpoint does not hold "
            "(max_exp_avg_sq); start a new run instead",
        ),
        (
            "trainer.limit_batches=2",
            "trainer.limit_batches: changes the steps per epoch that scheduler 'step' counts; "
            "it cannot be changed on a resumed run with a scheduler",
        ),
        (
            "scheduler.start_epoch=1",
            "scheduler.start_epoch: is set by trainkit when scheduler.name=... gives a resumed run a new "
            "schedule; give scheduler.name instead",
        ),
    ],
)
def test_changes_that_cannot_be_applied_exactly_are_refused(cli, tmp_path, override, message):
    config = tiny_config(tmp_path, scheduler={"name": "step"}, trainer={"epochs": 1})
    run = Path(trainkit.train(config, quiet=True)["run_dir"])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, _, err = cli("resume", run, override, "trainer.epochs=2")
    assert code == 2
    assert err.startswith("error: ") and err.rstrip().endswith(message), err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_finished_one_cycle_run_extended_with_a_new_schedule(tmp_path, monkeypatch):
    """The old schedule's steps stay as they were; the new one covers the added epochs only,
    and an interrupted extension resumes bit for bit."""
    config = tiny_config(tmp_path, optimizer=SGD, scheduler={"name": "onecycle"}, trainer={"epochs": 2})
    for name in ("a", "b"):
        trainkit.train({**config, "name": name}, quiet=True)
    first = _records(tmp_path / "ckpt" / "a", "train")
    extend = ["trainer.epochs=4", "scheduler.name=cosine"]
    trainkit.resume(tmp_path / "ckpt" / "a", extend, quiet=True)
    _interrupt_at(monkeypatch, 15)
    with pytest.raises(TrainingInterrupted):
        trainkit.resume(tmp_path / "ckpt" / "b", extend, quiet=True)
    monkeypatch.undo()
    trainkit.resume(tmp_path / "ckpt" / "b", quiet=True)

    run = tmp_path / "ckpt" / "a"
    train = _records(run, "train")
    assert train[: len(first)] == first  # the one-cycle steps are untouched
    recorded = yaml.safe_load((run / "config.yaml").read_text())["scheduler"]
    assert recorded == {"name": "cosine", "start_epoch": 2, "min_lr": 0.0}
    ckpt = load_ckpt(run / "last.pt")
    assert ckpt["scheduler"]["T_max"] == 12 and ckpt["scheduler"]["base_lrs"] == [0.05]  # 2 epochs x 6 steps
    (change,) = _records(run, "change")
    assert change["step"] == 12 and change["changes"]["scheduler"][1]["name"] == "cosine"
    assert change["lr"] == 0.05  # cosine starts from the optimizer's lr
    assert [r["lr"] for r in train if r["step"] > 12][-1] == pytest.approx(0.0, abs=1e-9)  # and ends at min_lr
    other = load_ckpt(tmp_path / "ckpt" / "b" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "state", "rng"):
        assert_same_tensors(ckpt[key], other[key], key)


def test_a_new_run_refuses_a_schedule_that_starts_later(cli, tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, scheduler={"name": "cosine", "start_epoch": 2}))
    code, _, err = cli("train", path, "-q")
    assert code == 2
    assert "scheduler.start_epoch: a new run's schedule starts at epoch 0, got 2" in err
    assert err.rstrip().endswith("remove it with ~scheduler.start_epoch")
    assert cli("train", path, "-q", "~scheduler.start_epoch")[0] == 0  # as suggested
