"""One process per run folder: what a new user tries (two trains, two resumes at the same
moment) gets one run and one clear refusal; kill -9 leaves no stale lock; readers never wait."""

from __future__ import annotations

import json
import re
import signal
import subprocess
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

pytestmark = pytest.mark.slow


def _config(tmp_path, name="c"):
    config = tiny_config(tmp_path, name=name, model={"dropout": 0.3}, data={"n_train": 480})
    config["trainer"].update(epochs=3, log_every=5)
    return config


def _start(*args):
    command = TRAINKIT + [str(a) for a in args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())


def _wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def _holder_pid(err: str) -> int:
    match = re.search(r"is in use by another trainkit process \(pid (\d+) on ", err)
    assert match, err
    return int(match.group(1))


def _one_wins(procs):
    """Both at the same moment: exactly one trains. The other exits 2 naming the winner's pid or,
    where the winner was done before it looked (a fast machine), finds the run it left. Returns
    the winner's output."""
    results = [(p, *p.communicate(timeout=180)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    late = [r for r in results if "already" in r[1] + r[2]]
    if late:  # it looked after the winner had ended: the run is there, whole
        (winner, out, _), (loser, _, _) = [r for r in results if r is not late[0]][0], late[0]
        assert len(late) == 1 and winner.returncode == 0 and loser.returncode in (0, 2), codes
        return out
    (winner, out, _), (_, _, loser_err) = sorted(results, key=lambda r: r[0].returncode)
    assert codes == [0, 2], [(p.returncode, err) for p, _, err in results]
    assert _holder_pid(loser_err) == winner.pid
    assert loser_err.strip().endswith("wait for it to end or stop it (its checkpoint then lets you resume)")
    assert len(loser_err.strip().splitlines()) == 1
    return out


def test_two_trains_of_one_config_at_the_same_moment_make_one_run(tmp_path):
    trainkit.train(_config(tmp_path, "ref"), quiet=True)
    path = write_config(tmp_path / "c.yaml", _config(tmp_path))
    _one_wins([_start("train", path, "-q"), _start("train", path, "-q")])
    run, reference = tmp_path / "ckpt" / "c", tmp_path / "ckpt" / "ref"
    for key in ("model", "optimizer", "state", "rng"):
        assert_same_tensors(load_ckpt(run / "last.pt")[key], load_ckpt(reference / "last.pt")[key], key)
    assert metric_history(run) == metric_history(reference)  # nothing interleaved
    assert not (run / "run.lock").exists()


def test_two_resumes_at_the_same_moment_and_a_new_process_after_kill_9(tmp_path):
    config = _config(tmp_path)
    config["trainer"]["epochs"] = 1
    trainkit.train(config, quiet=True)
    run = tmp_path / "ckpt" / "c"
    _one_wins([_start("resume", run, "trainer.epochs=3", "-q"), _start("resume", run, "trainer.epochs=3", "-q")])
    assert load_ckpt(run / "last.pt")["epoch"] == 3

    # kill -9 of the holder: the next process gets the lock at once
    path = write_config(tmp_path / "k.yaml", dict(_config(tmp_path), name="k"))
    killed = _start("train", path, "-q")
    k = tmp_path / "ckpt" / "k"
    assert _wait_for(lambda: killed.poll() is not None or (k / "last.pt").exists())
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (k / "run.lock").exists()  # left behind, but nobody holds it
    listed = subprocess.run(TRAINKIT + ["runs", k.parent, "--json"], capture_output=True, text=True)
    assert {r["name"]: r["status"] for r in json.loads(listed.stdout)}["k"] == "interrupted"
    resumed = subprocess.run(TRAINKIT + ["resume", k, "-q"], capture_output=True, text=True, env=subprocess_env())
    assert resumed.returncode == 0, resumed.stderr
    assert load_ckpt(k / "last.pt")["epoch"] == 3


def test_readers_do_not_wait_for_the_writer_and_launchers_fail_fast(tmp_path):
    path = write_config(tmp_path / "c.yaml", _config(tmp_path))
    run = tmp_path / "ckpt" / "c"
    # trains until the SIGTERM below, however fast the machine
    writer = _start("train", path, "-q", "trainer.epochs=100000")
    try:
        assert _wait_for(lambda: writer.poll() is not None or (run / "best.pt").exists())
        assert writer.poll() is None
        evaluated = subprocess.run(
            TRAINKIT + ["eval", "--ckpt", run, "--json"], capture_output=True, text=True, env=subprocess_env()
        )
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(evaluated.stdout)["samples"] == 40
        listed = subprocess.run(TRAINKIT + ["runs", run.parent, "--json"], capture_output=True, text=True)
        assert json.loads(listed.stdout)[0]["status"] == "running"
        plotted = subprocess.run(
            TRAINKIT + ["plot", run, "-o", tmp_path / "c.png"], capture_output=True, text=True, env=subprocess_env()
        )
        assert plotted.returncode == 0, plotted.stderr
        # --nproc refuses before starting any process; --overwrite deletes nothing of the live run
        for args in (["train", path, "--nproc", "2"], ["resume", run, "--nproc", "2"], ["train", path, "--overwrite"]):
            command = TRAINKIT + [str(a) for a in args]
            refused = subprocess.run(command, capture_output=True, text=True, env=subprocess_env())
            assert refused.returncode == 2, refused.stderr
            assert _holder_pid(refused.stderr) == writer.pid
            assert "torch.distributed" not in refused.stderr
        assert (run / "best.pt").exists() and (run / "config.yaml").exists()
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=120)
    assert writer.returncode == 143
