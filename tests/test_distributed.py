"""torch.distributed on the CPU (gloo), launched by torchrun exactly as users do."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import TRAINKIT, assert_same_tensors, load_ckpt, metric_history, subprocess_env, tiny_config, write_config

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _torchrun(nproc, *args, extra=(), env=None, timeout=240):
    command = TORCHRUN + ["--standalone", f"--nproc_per_node={nproc}", *extra, "-m", "trainkit", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env or subprocess_env(), timeout=timeout)


def _config(tmp_path, name, batch_size, **sections):
    config = tiny_config(
        tmp_path,
        name=name,
        data={"n_train": 128, "n_test": 50, "batch_size": batch_size, "eval_batch_size": 10},
        **sections,
    )
    config["trainer"].update(epochs=2, log_every=2)
    return config


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, cli):
    one = write_config(tmp_path / "one.yaml", _config(tmp_path, "one", 32))
    two = write_config(tmp_path / "two.yaml", _config(tmp_path, "two", 16))
    assert cli("train", one, "-q")[0] == 0
    result = _torchrun(2, "train", two)
    assert result.returncode == 0, result.stderr
    assert "2 processes x batch 16 = effective batch 32" in result.stderr
    assert result.stdout.count("trained 2 epochs, 8 steps") == 1  # only rank 0 prints
    a, b = load_ckpt(tmp_path / "ckpt" / "one" / "last.pt"), load_ckpt(tmp_path / "ckpt" / "two" / "last.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    assert not any(k.startswith("module.") for k in b["model"])  # the unwrapped model
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], rtol=1e-5, atol=1e-6), key
    # the accuracy printed by 2 processes covers the whole test set: `eval` in 1 process agrees
    two_procs = [r for r in metric_history(tmp_path / "ckpt" / "two") if r["type"] == "epoch"][-1]
    code, out, err = cli("eval", "--ckpt", tmp_path / "ckpt" / "two" / "last.pt", "--json")
    assert code == 0, err
    one_proc = json.loads(out)
    assert one_proc["samples"] == 50
    assert one_proc["accuracy"] == two_procs["val_accuracy"]
    assert one_proc["loss"] == pytest.approx(two_procs["val_loss"], rel=1e-5)


def test_two_process_run_interrupted_and_resumed_with_two_processes_is_bit_identical(tmp_path):
    config = _config(tmp_path, "ref", 16, model={"dropout": 0.3})
    reference = write_config(tmp_path / "ref.yaml", config)
    assert _torchrun(2, "train", reference, "-q").returncode == 0
    run_dir = tmp_path / "ckpt" / "run"
    interrupted = write_config(tmp_path / "run.yaml", dict(config, name="run"))
    command = TORCHRUN + ["--standalone", "--nproc_per_node=2", "-m", "trainkit", "train", str(interrupted)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"train"') >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # as a cluster scheduler would, through torchrun
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    # the workers' own record of it. Their last stderr line is sometimes missing after the
    # launcher's kill -9 (about one run in four on 2 cores; cause not found yet: both ranks
    # leave the process group cleanly and the checkpoint and status are complete)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["message"].startswith("interrupted by SIGTERM; checkpoint saved at step"), (status, err)
    stopped = load_ckpt(run_dir / "last.pt")
    assert 0 < stopped["step"] < 8 and stopped["world_size"] == 2
    resumed = _torchrun(2, "resume", run_dir, "-q")
    assert resumed.returncode == 0, resumed.stderr
    final, expected = load_ckpt(run_dir / "last.pt"), load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(final[key], expected[key], key)
    assert metric_history(run_dir) == metric_history(tmp_path / "ckpt" / "ref")


def test_a_checkpoint_from_two_processes_resumes_in_one(tmp_path, cli):
    path = write_config(tmp_path / "two.yaml", _config(tmp_path, "two", 16))
    assert _torchrun(2, "train", path, "-q").returncode == 0
    code, _, err = cli("resume", tmp_path / "ckpt" / "two", "trainer.epochs=3", "-q")
    assert code == 0, err
    assert load_ckpt(tmp_path / "ckpt" / "two" / "last.pt")["epoch"] == 3


def test_two_nodes_with_c10d_rendezvous(tmp_path):
    path = write_config(tmp_path / "nodes.yaml", _config(tmp_path, "nodes", 16))
    endpoint = f"127.0.0.1:{_free_port()}"
    command = TORCHRUN + [
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={endpoint}",
        "--rdzv_id=trainkit-test",
        "-m",
        "trainkit",
        "train",
        str(path),
        "-q",
    ]
    nodes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert sum(out.count("trained 2 epochs, 8 steps") for out, _ in outputs) == 1
    assert load_ckpt(tmp_path / "ckpt" / "nodes" / "last.pt")["world_size"] == 2


CRASH_PLUGIN = """
import os
from torch import nn
from trainkit import MODELS

class CrashOnRank1(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.linear = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls == 3:
            raise RuntimeError("boom: rank 1 failed on purpose")
        return self.linear(x.flatten(1))

MODELS.register("crash_on_rank1")(CrashOnRank1)
"""


def test_a_crash_on_rank_1_stops_the_whole_job_quickly_with_its_error(tmp_path):
    (tmp_path / "crash_plugin.py").write_text(CRASH_PLUGIN)
    config = _config(tmp_path, "crash", 16, imports=["crash_plugin"])
    config["model"] = {"name": "crash_on_rank1"}
    path = write_config(tmp_path / "crash.yaml", config)
    env = subprocess_env()
    env["PYTHONPATH"] = str(tmp_path)
    started = time.time()
    result = _torchrun(2, "train", path, "-q", env=env, timeout=120)
    elapsed = time.time() - started
    assert result.returncode != 0
    assert "RuntimeError: boom: rank 1 failed on purpose" in result.stderr
    assert elapsed < 60, elapsed


def test_nproc_starts_torch_distributed_for_you(tmp_path):
    path = write_config(tmp_path / "np.yaml", _config(tmp_path, "np", 16))
    result = subprocess.run(
        TRAINKIT + ["train", str(path), "-q", "--nproc", "2"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("trained 2 epochs, 8 steps") == 1
    assert load_ckpt(tmp_path / "ckpt" / "np" / "last.pt")["world_size"] == 2
    resumed = subprocess.run(
        TRAINKIT + ["resume", str(tmp_path / "ckpt" / "np"), "trainer.epochs=3", "-q", "--nproc=2"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr
    last = load_ckpt(tmp_path / "ckpt" / "np" / "last.pt")
    assert last["epoch"] == 3 and last["world_size"] == 2


def _bad_config(tmp_path):
    config = _config(tmp_path, "bad", 16)
    config["trainer"]["epochs"] = True  # not a number
    config["optimizer"]["lr"] = float("inf")
    return write_config(tmp_path / "bad.yaml", config)


BAD_CONFIG_LINES = [
    "  - line 19: optimizer.lr: should be a finite number, got inf",
    "  - line 21: trainer.epochs: should be a valid integer, got True",
]


def test_nproc_checks_the_config_and_run_folder_before_any_worker_starts(tmp_path):
    bad = _bad_config(tmp_path)
    result = subprocess.run(
        TRAINKIT + ["train", str(bad), "--nproc", "2"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=240,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {bad}: 2 problems in the config:", *BAD_CONFIG_LINES]
    assert not (tmp_path / "ckpt").exists()
    (tmp_path / "ckpt" / "np").mkdir(parents=True)
    (tmp_path / "ckpt" / "np" / "config.yaml").write_text("name: np\n")  # a run is there already
    good = write_config(tmp_path / "np.yaml", _config(tmp_path, "np", 16))
    for args in (["train", str(good)], ["resume", str(tmp_path / "nothing")]):
        result = subprocess.run(
            TRAINKIT + [*args, "--nproc", "2"], capture_output=True, text=True, env=subprocess_env(), timeout=240
        )
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ") and "torch.distributed" not in result.stderr


def test_under_bare_torchrun_a_config_error_is_printed_once(tmp_path):
    bad = _bad_config(tmp_path)
    result = _torchrun(2, "train", bad)
    assert result.returncode != 0  # torchrun's own code: it exits 1 whatever its workers exit with
    ours = [line for line in result.stderr.splitlines() if line.startswith("[rank")]
    assert ours == [f"[rank 0] error: {bad}: 2 problems in the config:"]
    # torchrun's summary: the first failure is rank 0's with our message where a traceback goes;
    # the other rank failed the same way, or torchrun stopped it (SIGTERM) before it got there.
    failures, root_cause = result.stderr.split("Root Cause (first observed failure):")
    assert "exitcode  : 2" in root_cause and "\n".join(BAD_CONFIG_LINES) + "\n" in root_cause.replace("    - ", "  - ")
    other = failures.split("Failures:")[1]
    assert ("exitcode  : 2" in other and BAD_CONFIG_LINES[0].strip() in other) or "(SIGTERM)" in other, other
    assert "trainkit/cli.py" not in result.stderr and "trainkit/api.py" not in result.stderr  # no traceback of ours


def _state(pid: int) -> str:
    """A process's state letter ('Z' for a zombie), or '' when it is gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the workers")
def test_kill_9_of_the_nproc_launcher_stops_its_workers_with_a_checkpoint_and_resume_is_exact(tmp_path):
    config = _config(tmp_path, "ref", 16, model={"dropout": 0.3})
    config["data"]["n_train"] = 640
    reference = write_config(tmp_path / "ref.yaml", config)
    assert _torchrun(2, "train", reference, "-q").returncode == 0
    run_dir = tmp_path / "ckpt" / "run"
    command = TRAINKIT + ["train", str(write_config(tmp_path / "run.yaml", dict(config, name="run"))), "--nproc", "2"]
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS", None)  # trainkit chooses the threads per process (and says so)
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 180
    while time.time() < deadline and launcher.poll() is None:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"train"') >= 2:
            break
        time.sleep(0.01)
    workers = [int(p) for p in open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()]
    assert len(workers) == 2 and launcher.poll() is None
    launcher.kill()  # SIGKILL: no chance to tell anyone
    out, err = launcher.communicate(timeout=120)  # the pipes close when the workers are gone too
    assert launcher.returncode == -signal.SIGKILL
    assert all(_state(pid) in ("", "Z") for pid in workers), [_state(pid) for pid in workers]
    # the workers' own record of it. Their last stderr line is sometimes missing after the
    # launcher's kill -9 (about one run in four on 2 cores; cause not found yet: both ranks
    # leave the process group cleanly and the checkpoint and status are complete)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["message"].startswith("interrupted by SIGTERM; checkpoint saved at step"), (status, err)
    assert "OMP_NUM_THREADS environment variable" not in err  # torchrun's banner: trainkit sets the threads
    assert re.search(
        r"^starting 2 processes \(torch.distributed, this machine\), \d+ CPU threads? each \(\d+ CPU cores / 2\)$",
        err,
        re.M,
    )
    stopped = load_ckpt(run_dir / "last.pt")
    assert 0 < stopped["step"] < 40 and stopped["world_size"] == 2
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    resumed = subprocess.run(
        TRAINKIT + ["resume", str(run_dir), "-q", "--nproc", "2"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr
    final, expected = load_ckpt(run_dir / "last.pt"), load_ckpt(tmp_path / "ckpt" / "ref" / "last.pt")
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(final[key], expected[key], key)
    assert metric_history(run_dir) == metric_history(tmp_path / "ckpt" / "ref")


def test_sigterm_to_the_nproc_launcher_stops_every_rank_and_exits_143(tmp_path):
    config = _config(tmp_path, "term", 16)
    config["data"]["n_train"] = 640
    path = write_config(tmp_path / "term.yaml", config)
    run_dir = tmp_path / "ckpt" / "term"
    launcher = subprocess.Popen(
        TRAINKIT + ["train", str(path), "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.time() + 180
    while time.time() < deadline and launcher.poll() is None:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"train"') >= 2:
            break
        time.sleep(0.01)
    assert launcher.poll() is None, "the run ended before the signal could be sent"
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, err  # the workers' code, not torchrun's 1
    assert err.count("interrupted by SIGTERM; checkpoint saved at step") == 1, err  # rank 0 speaks for all
    assert err.count("SIGTERM received") == 1, err
    assert "Traceback" not in err and "ChildFailedError" not in err, err
    assert 0 < load_ckpt(run_dir / "last.pt")["step"] < 40
