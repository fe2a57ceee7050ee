"""Preemptible clusters: `train --auto-resume` (one command a job script runs again and again)
and SIGUSR1 (checkpoint, exit 124, requeue), with real signals on subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

import trainkit
from conftest import (
    TRAINKIT,
    assert_same_tensors,
    load_ckpt,
    metric_history,
    subprocess_env,
    tiny_config,
    write_config,
)
from trainkit.errors import TrainingInterrupted, TrainingPreempted
from trainkit.training.session import Session


def _config(tmp_path, name="p", data=None, **sections):
    config = tiny_config(tmp_path, name=name, model={"dropout": 0.3}, data={"n_train": 320, **(data or {})}, **sections)
    config["trainer"].update(epochs=3, log_every=5)
    return config


def _stop_at(monkeypatch, step, signum):
    """The stop request a signal would set, appearing right after optimizer step `step`."""

    def stop_requested(self, state):
        if state.step == step and self.stop is not None:
            self.stop.signum = signum
        return state.step == step

    monkeypatch.setattr(Session, "stop_requested", stop_requested)


def test_sigusr1_means_preempted_with_exit_code_124_and_the_others_keep_theirs():
    preempted = TrainingInterrupted.for_signal(signal.SIGUSR1, "run", 7)
    assert isinstance(preempted, TrainingPreempted) and isinstance(preempted, TrainingInterrupted)
    assert preempted.exit_code == 124
    assert str(preempted) == "interrupted by SIGUSR1; checkpoint saved at step 7"
    assert TrainingInterrupted.for_signal(signal.SIGTERM, "run", 7).exit_code == 143
    assert TrainingInterrupted.for_signal(signal.SIGINT, "run", 7).exit_code == 130


def test_auto_resume_trains_resumes_and_then_says_complete(cli, tmp_path, monkeypatch):
    reference = tmp_path / "ckpt" / "ref"
    trainkit.train(_config(tmp_path, "ref"), quiet=True)
    path = write_config(tmp_path / "p.yaml", _config(tmp_path))
    run = tmp_path / "ckpt" / "p"

    _stop_at(monkeypatch, 7, signal.SIGUSR1)  # no run yet: it trains (and is preempted)
    code, _, err = cli("train", path, "--auto-resume", "-q")
    assert code == 124, err
    assert "interrupted by SIGUSR1; checkpoint saved at step 7" in err
    assert load_ckpt(run / "last.pt")["step"] == 7

    _stop_at(monkeypatch, 31, signal.SIGUSR1)  # interrupted: resumes (and is preempted again)
    assert cli("train", path, "--auto-resume", "-q")[0] == 124
    monkeypatch.undo()
    code, out, err = cli("train", path, "--auto-resume", "-q")
    assert code == 0, err
    assert "trained 3 epochs, 60 steps" in out
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(load_ckpt(run / "last.pt")[key], load_ckpt(reference / "last.pt")[key], key)
    assert metric_history(run) == metric_history(reference)

    before = (run / "last.pt").stat().st_mtime_ns
    code, out, err = cli("train", path, "--auto-resume", "-q")  # complete: nothing to do
    assert code == 0, err
    assert out == f"{run} is already complete (3/3 epochs); to train longer: trainkit resume {run} trainer.epochs=N\n"
    assert (run / "last.pt").stat().st_mtime_ns == before


def test_auto_resume_applies_the_configs_new_epochs_and_refuses_another_run(cli, tmp_path):
    config = _config(tmp_path)
    path = write_config(tmp_path / "p.yaml", config)
    assert cli("train", path, "-q")[0] == 0
    config["trainer"]["epochs"] = 4  # the job script's config now asks for more: resume and extend
    write_config(path, config)
    code, out, err = cli("train", path, "--auto-resume", "-q")
    assert code == 0, err
    assert "trained 4 epochs" in out and load_ckpt(tmp_path / "ckpt" / "p" / "last.pt")["epoch"] == 4
    config["model"]["hidden"] = 32  # not the same run any more
    write_config(path, config)
    code, _, err = cli("train", path, "--auto-resume", "-q")
    assert code == 2
    assert err.startswith(f"error: model.hidden: cannot be changed for the run in {tmp_path / 'ckpt' / 'p'}")


def test_auto_resume_of_a_try_that_died_before_its_first_checkpoint_starts_over(cli, tmp_path):
    path = write_config(tmp_path / "p.yaml", _config(tmp_path))
    run = tmp_path / "ckpt" / "p"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("left by a try that was killed\n")
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 5}\n')
    code, out, err = cli("train", path, "--auto-resume", "-q")
    assert code == 0, err
    assert load_ckpt(run / "last.pt")["epoch"] == 3
    assert metric_history(run)[0]["step"] == 5 and len(metric_history(run)) == 15  # its own records only


def test_auto_resume_and_overwrite_together_are_refused(cli, tmp_path):
    path = write_config(tmp_path / "p.yaml", _config(tmp_path))
    code, _, err = cli("train", path, "--auto-resume", "--overwrite")
    assert code == 2 and err.strip() == "error: --auto-resume and --overwrite contradict each other; choose one"


def _wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_a_job_preempted_again_and_again_ends_as_the_uninterrupted_run(tmp_path):
    """What a SLURM job with --signal=USR1@90 and requeue-on-124 does, three times over."""
    reference = tmp_path / "ckpt" / "ref"
    trainkit.train(_config(tmp_path, "ref"), quiet=True)
    path = write_config(tmp_path / "p.yaml", _config(tmp_path))
    run = tmp_path / "ckpt" / "p"
    codes, steps = [], []
    for _attempt in range(10):
        proc = subprocess.Popen(
            TRAINKIT + ["train", str(path), "--auto-resume"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        if len(codes) < 3:  # the scheduler's notice, once training is under way
            done = len(metric_history(run)) if (run / "metrics.jsonl").exists() else 0
            assert _wait_for(
                lambda d=done, p=proc: (
                    p.poll() is not None or (run / "metrics.jsonl").exists() and len(metric_history(run)) > d
                )
            )
            proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
        assert proc.returncode == 124, err
        assert "SIGUSR1 received: finishing this step and saving a checkpoint" in err
        assert "interrupted by SIGUSR1; checkpoint saved at step" in err
        steps.append(load_ckpt(run / "last.pt")["step"])
    assert codes == [124, 124, 124, 0], codes
    assert steps == sorted(steps) and 0 < steps[0] and steps[-1] < 60
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(load_ckpt(run / "last.pt")[key], load_ckpt(reference / "last.pt")[key], key)
    assert metric_history(run) == metric_history(reference)
    again = subprocess.run(
        TRAINKIT + ["train", str(path), "--auto-resume"], capture_output=True, text=True, env=subprocess_env()
    )
    assert again.returncode == 0 and "is already complete (3/3 epochs); to train longer" in again.stdout


@pytest.mark.slow
def test_sigusr1_through_nproc_reaches_every_process_and_the_launcher_exits_124(tmp_path):
    config = _config(tmp_path, "ref", data={"n_train": 256, "batch_size": 16})
    reference = write_config(tmp_path / "ref.yaml", config)
    ran = subprocess.run(
        TRAINKIT + ["train", str(reference), "-q", "--nproc", "2"], capture_output=True, text=True, env=subprocess_env()
    )
    assert ran.returncode == 0, ran.stderr
    path = write_config(tmp_path / "p.yaml", dict(config, name="p"))
    run = tmp_path / "ckpt" / "p"
    proc = subprocess.Popen(
        TRAINKIT + ["train", str(path), "--auto-resume", "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert _wait_for(lambda: proc.poll() is not None or (run / "metrics.jsonl").exists() and len(metric_history(run)))
    proc.send_signal(signal.SIGUSR1)  # to the launcher only, as SLURM signals the job step's process
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 124, err
    assert "interrupted by SIGUSR1; checkpoint saved at step" in err
    stopped = load_ckpt(run / "last.pt")
    assert 0 < stopped["step"] < 24 and stopped["world_size"] == 2
    resumed = subprocess.run(
        TRAINKIT + ["train", str(path), "--auto-resume", "--nproc", "2", "-q"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert resumed.returncode == 0, resumed.stderr
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(load_ckpt(run / "last.pt")[key], load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")[key], key)
    assert metric_history(run) == metric_history(tmp_path / "ckpt" / "ref")


def test_the_launcher_is_torchrun_with_sigusr1_forwarded():
    probe = subprocess.run(
        [sys.executable, "-m", "trainkit.launch", "--help"], capture_output=True, text=True, env=subprocess_env()
    )
    assert probe.returncode == 0 and "--nproc_per_node" in probe.stdout
