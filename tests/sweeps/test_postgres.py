"""Two `trainkit sweep` commands on one PostgreSQL study, as on two machines; one is killed with
kill -9 mid-trial. The other finishes the study: exactly `trials` runs, the dead one failed by its
heartbeat and run again from its own last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from sweep_helpers import slow_base, start_trainkit, write_sweep

from trainkit.runfolder.runlog import read_status

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server in a temporary folder on a free local port, or a skip saying why not."""
    import postgres

    try:
        server = postgres.Server().start()
    except postgres.Unavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


def _running_trial_of(session: int, sweep_dir: Path) -> Path | None:
    """A trial folder whose trial process, running now, belongs to this process group."""
    for folder in sorted(sweep_dir.glob("trial-*")):
        status = read_status(folder)
        if status.get("status") == "running":
            try:
                if os.getpgid(status["pid"]) == session:
                    return folder
            except ProcessLookupError:
                continue
    return None


def _wait_for(sweep, found):
    deadline = time.monotonic() + 120
    while (result := found()) is None:
        assert time.monotonic() < deadline and sweep.poll() is None, "a sweep never ran a trial"
        time.sleep(0.05)
    return result


def test_two_sweeps_on_one_study_one_killed(tmp_path, postgres_url):
    path = write_sweep(
        tmp_path,
        base=slow_base(tmp_path, delay=0.3, checkpoint={"every_n_steps": 2}),
        objective={"metric": "val_accuracy", "mode": "max"},
        params={"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        trials=4,
        heartbeat={"interval": 1, "grace_period": 3},
    )
    sweep_dir = tmp_path / "ckpt" / "search"
    doomed = start_trainkit("sweep", path, "--storage", postgres_url, cwd=tmp_path)
    _wait_for(doomed, lambda: _running_trial_of(doomed.pid, sweep_dir))
    survivor = start_trainkit("sweep", path, "--storage", postgres_url, "--json", cwd=tmp_path)
    _wait_for(survivor, lambda: _running_trial_of(survivor.pid, sweep_dir))  # both at work on the study
    victim = _wait_for(doomed, lambda: _running_trial_of(doomed.pid, sweep_dir))  # its trial now
    os.killpg(doomed.pid, signal.SIGKILL)  # that machine is gone: no word to the database
    doomed.wait()
    checkpointed = (victim / "latest.json").exists()
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    summary = json.loads(out)
    runs = {t["number"]: t for t in summary["trials"]}
    assert len(runs) == 4 and {t["state"] for t in runs.values()} == {"complete"}
    dead = runs[int(victim.name.removeprefix("trial-"))]
    assert len(dead["attempts"]) == 2  # failed by its heartbeat, run again
    assert f"{victim.name}: no heartbeat for 3 s, so its process is gone; it resumes" in err
    again = "resumes from its last checkpoint" if checkpointed else "started"
    assert f"{victim.name} (Optuna trial {dead['attempts'][1]}) {again}" in err
    assert "postgresql://trainkit@127.0.0.1" in summary["storage"]
