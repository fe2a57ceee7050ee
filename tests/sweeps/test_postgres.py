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
    """A trial folder with a checkpoint whose trial process belongs to this process group."""
    for folder in sorted(sweep_dir.glob("trial-*")):
        status = read_status(folder)
        if status.get("status") == "running" and (folder / "latest.json").exists():
            try:
                if os.getpgid(status["pid"]) == session:
                    return folder
            except ProcessLookupError:
                continue
    return None


def test_two_sweeps_on_one_study_one_killed(tmp_path, postgres_url):
    path = write_sweep(
        tmp_path,
        base=slow_base(tmp_path, checkpoint={"every_n_steps": 2}),
        objective={"metric": "val_accuracy", "mode": "max"},
        params={"optimizer.lr": {"type": "loguniform", "low": 1e-3, "high": 0.1}},
        trials=3,
        heartbeat={"interval": 1, "grace_period": 3},
    )
    sweep_dir = tmp_path / "ckpt" / "search"
    doomed = start_trainkit("sweep", path, "--storage", postgres_url, cwd=tmp_path)
    survivor = start_trainkit("sweep", path, "--storage", postgres_url, "--json", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while (victim := _running_trial_of(doomed.pid, sweep_dir)) is None:
        assert time.monotonic() < deadline and doomed.poll() is None, "the first sweep never ran a trial"
        time.sleep(0.05)
    os.killpg(doomed.pid, signal.SIGKILL)  # that machine is gone: no word to the database
    doomed.wait()
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    summary = json.loads(out)
    runs = {t["number"]: t for t in summary["trials"]}
    assert len(runs) == 3 and {t["state"] for t in runs.values()} == {"complete"}
    dead = runs[int(victim.name.removeprefix("trial-"))]
    assert len(dead["attempts"]) == 2  # failed by its heartbeat, run again
    assert f"{victim.name}: no heartbeat for 3 s, so its process is gone; it resumes" in err
    assert f"{victim.name} (Optuna trial {dead['attempts'][1]}) resumes from its last checkpoint" in err
    assert "postgresql://trainkit@127.0.0.1" in summary["storage"]
