"""The config reader under a seeded fuzzer (fuzz_configs.py): 2,000 cases by default.

TRAINKIT_FUZZ_CASES=20000 (and TRAINKIT_FUZZ_SEED=N for other cases) runs more. The cases
run in one child process with an address-space limit, so a case that would eat memory
fails the test instead of the machine; each case also has a watchdog alarm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

pytestmark = pytest.mark.slow  # CI runs it; the fast set (-m "not slow") leaves it out

FUZZER = Path(__file__).with_name("fuzz_configs.py")
CASES = int(os.environ.get("TRAINKIT_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("TRAINKIT_FUZZ_SEED", "0"))


def fuzz(tmp_path: Path, cases: int, seed: int) -> dict:
    run = subprocess.run(
        [sys.executable, str(FUZZER), "--seed", str(seed), "--cases", str(cases), "--folder", str(tmp_path / "cases")],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60 + cases,  # a bound on a hang of the fuzzer itself, far above its run time
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_every_fuzzed_config_is_ok_or_one_line_per_problem(tmp_path):
    report = fuzz(tmp_path, CASES, SEED)
    assert report["failed"] == 0, json.dumps(report["failures"], indent=1)[:6000]
    counts = report["counts"]
    assert sum(counts[f"kind {k}"] for k in ("structure", "yaml", "overrides", "bytes")) == CASES
    # the generator reaches both outcomes, and every kind of case ends in config errors too
    assert counts["exit 0"] > 0 and counts["exit 2"] > 0
    assert all(counts.get(f"{k}: config error", 0) > 0 for k in ("structure", "yaml", "overrides", "bytes"))


def test_the_fuzzer_reports_a_broken_rule(tmp_path, monkeypatch):
    """The checker itself: a reader that lets a traceback out is caught (so the test above can fail)."""
    sys.path.insert(0, str(FUZZER.parent))
    try:
        import fuzz_configs
    finally:
        sys.path.remove(str(FUZZER.parent))
    from trainkit.config import _yaml

    def broken(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(_yaml, "read_yaml_file", broken)
    monkeypatch.setattr("trainkit.config._validate.read_yaml_file", broken)
    report = fuzz_configs.run(seed=1, cases=5, folder=tmp_path / "cases")
    assert report["failed"] == 5
    assert report["failures"][0]["problem"].startswith("exception RecursionError")
