"""`trainkit sweep` end to end on synthetic data: trials are ordinary run folders, the summary and
best.yaml are right, kill -9 and a rerun continue the study exactly, --jobs runs trials side by
side, and seeds give a mean and a spread per configuration."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from pathlib import Path

import pytest
import yaml
from sweep_helpers import slow_base, start_trainkit, write_sweep

from conftest import assert_same_tensors, load_ckpt, metric_history, tiny_config
from trainkit import api
from trainkit.runfolder.runlog import read_records, read_status
from trainkit.sweeps.driver import cpu_cores

pytestmark = pytest.mark.slow


def _sweep_json(cli, *args):
    code, out, err = cli("sweep", *args, "--json")
    assert code == 0, err
    return json.loads(out), err


def test_a_tiny_sweep_end_to_end(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(
        tmp_path,
        overrides=["trainer.epochs=1"],
        objective={"metric": "val_accuracy", "mode": "max"},
        params={
            "optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1},
            "model.hidden": {"type": "choice", "values": [8, 16]},
        },
        trials=3,
    )
    summary, err = _sweep_json(cli, path)
    assert "sweep search: 3 trials (0 done), 1 at a time in their own processes" in err
    assert set(summary) >= {"best", "trials"}
    assert [set(t) >= {"number", "state", "params", "value", "run_dir"} for t in summary["trials"]] == [True] * 3
    assert [(t["number"], t["state"]) for t in summary["trials"]] == [(0, "complete"), (1, "complete"), (2, "complete")]
    for trial in summary["trials"]:  # each an ordinary run: its config holds the trial's values
        run_dir = Path(trial["run_dir"])
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["name"] == run_dir.name and saved["trainer"]["epochs"] == 1
        assert saved["optimizer"]["lr"] == trial["params"]["optimizer.lr"]
        assert saved["model"]["hidden"] == trial["params"]["model.hidden"]
        assert trial["value"] == read_records(run_dir, "epoch")[-1]["val_accuracy"]
    best = max(summary["trials"], key=lambda t: (t["value"], -t["number"]))
    assert summary["best"] == {k: best[k] for k in ("number", "value", "params", "run_dir")}

    # best.yaml is the base config with the best values, and trains to the same result
    best_yaml = tmp_path / "ckpt" / "search" / "best.yaml"
    result = api.train(best_yaml, quiet=True)
    assert result["run_dir"] == str(tmp_path / "ckpt" / "search-best")
    assert result["final"]["val_accuracy"] == best["value"]

    # the trials work with eval, runs and plot as any run; plot of the sweep folder draws the sweep
    code, out, _ = cli("eval", "--ckpt", best["run_dir"], "--json")
    assert code == 0 and json.loads(out)["accuracy"] == best["value"]
    runs = json.loads(cli("runs", "ckpt", "--json")[1])
    assert [r["name"] for r in runs] == ["search-best", "search/trial-0000", "search/trial-0001", "search/trial-0002"]
    assert {r.get("sweep") for r in runs[1:]} == {"search"}
    code, out, err = cli("plot", "ckpt/search", "-o", "sweep.png")
    assert code == 0, err
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    # the same command again: nothing is re-run, the table is printed again
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "ckpt" / "search").glob("trial-*/last.pt")}
    again, err = _sweep_json(cli, path)
    assert "3 trials (3 done)" in err
    assert [t["attempts"] for t in again["trials"]] == [[0], [1], [2]]
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    code, out, _ = cli("sweep", path)
    assert code == 0 and "trial-0002" in out and f"best: trial-{best['number']:04d}" in out


def _wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _checkpointed_trial(sweep_dir: Path, skip: set[str]) -> Path | None:
    """A trial folder, not in `skip`, that is running and has a checkpoint (not yet finished)."""
    for folder in sorted(sweep_dir.glob("trial-*")):
        if folder.name not in skip and (folder / "latest.json").exists():
            if read_status(folder).get("status") == "running":
                return folder
    return None


def _same_as_uninterrupted(run_dir: Path, reference_dir: Path) -> None:
    """Train the trial's config from scratch, uninterrupted, in this process; compare bit for bit."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config |= {"name": run_dir.name, "checkpoint": {**config["checkpoint"], "dir": str(reference_dir)}}
    api.train(config, quiet=True)
    reference = reference_dir / run_dir.name
    assert_same_tensors(load_ckpt(run_dir / "last.pt")["model"], load_ckpt(reference / "last.pt")["model"], "model")
    assert metric_history(run_dir) == metric_history(reference)


@pytest.mark.usefixtures("isolated_registries")
def test_kill_9_and_the_same_command_again_continue_the_study_exactly(tmp_path, monkeypatch):
    """kill -9 of the sweep with its trial process, then of a trial process alone: the study ends
    with exactly `trials` runs, each interrupted run resumed from its own last checkpoint and
    equal, bit for bit, to the same run never interrupted."""
    path = write_sweep(
        tmp_path,
        base=slow_base(tmp_path, checkpoint={"every_n_steps": 2}),
        objective={"metric": "val_accuracy", "mode": "max"},
        params={"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        trials=2,
    )
    sweep_dir = tmp_path / "ckpt" / "search"
    first = start_trainkit("sweep", path, cwd=tmp_path)
    _wait_for(lambda: _checkpointed_trial(sweep_dir, set()), "a checkpoint of trial 0")
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its trial process, at once
    first.wait()
    assert read_status(sweep_dir / "trial-0000")["status"] == "running"  # nobody could say otherwise

    second = start_trainkit("sweep", path, "--json", cwd=tmp_path)
    other = _wait_for(lambda: _checkpointed_trial(sweep_dir, {"trial-0000"}), "a checkpoint of the second run")
    os.kill(read_status(other)["pid"], signal.SIGKILL)  # one trial process alone
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    summary = json.loads(out)
    assert "trial-0000: its process is gone; it resumes" in err
    assert f"{other.name} (Optuna trial 3) resumes from its last checkpoint" in err
    assert [(t["number"], t["state"], t["attempts"]) for t in summary["trials"]] == [
        (0, "complete", [0, 1]),
        (2, "complete", [2, 3]),
    ]
    for name in ("trial-0000", "trial-0002"):  # resumed, not trained again from the start
        log = (sweep_dir / "logs" / f"{name}.log").read_text()
        assert f"resuming {sweep_dir / name} from step-" in log
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the plugin, for training the references here
    for name in ("trial-0000", "trial-0002"):
        _same_as_uninterrupted(sweep_dir / name, tmp_path / "reference")


def test_jobs_run_side_by_side_and_seeds_give_mean_and_spread(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(
        tmp_path,
        base=tiny_config(tmp_path, trainer={"epochs": 1}),
        objective={"metric": "val_loss", "mode": "min"},
        params={"seed": {"type": "choice", "values": [0, 1]}, "model.hidden": {"type": "choice", "values": [8, 16]}},
        sampler="grid",
    )
    summary, err = _sweep_json(cli, path, "--jobs", "2")
    threads = max(1, cpu_cores() // 2)
    assert f"2 at a time in their own processes, {threads} CPU thread" in err
    points = sorted((t["params"]["model.hidden"], t["params"]["seed"]) for t in summary["trials"])
    assert points == [(8, 0), (8, 1), (16, 0), (16, 1)]  # the grid, each point once
    logs = sorted((tmp_path / "ckpt" / "search" / "logs").glob("*.log"))
    assert len(logs) == 4 and all(f": {threads} CPU threads" in log.read_text() for log in logs)
    groups = {g["params"]["model.hidden"]: g for g in summary["configurations"]}
    for hidden, group in groups.items():
        values = [t["value"] for t in summary["trials"] if t["params"]["model.hidden"] == hidden]
        assert group["n"] == 2 and sorted(group["seeds"]) == [0, 1]
        assert group["mean"] == pytest.approx(statistics.fmean(values))
        assert group["std"] == pytest.approx(statistics.stdev(values))
    code, out, _ = cli("sweep", path)
    assert code == 0 and "val_loss over seeds" in out
