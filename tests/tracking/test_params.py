"""Params and the git commit a tracker gets (tracking/_params.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from trainkit.tracking._params import flat_params, git_commit, safe_name, shorten


def test_the_config_is_flattened_to_dotted_keys_with_json_values():
    config = {
        "name": "a",
        "model": {"name": "cnn", "channels": [4, 8]},
        "trainer": {"grad_clip": None, "compile": False},
    }
    assert flat_params(config, 250, 6000) == {
        "name": "a",
        "model.name": "cnn",
        "model.channels": "[4, 8]",
        "trainer.grad_clip": "null",
        "trainer.compile": "false",
    }


def test_long_values_are_shortened_with_a_note_and_never_exceed_the_limit():
    text = "x" * 7000
    short = shorten(text, 6000)
    assert len(short) == 6000
    assert short.endswith("... [7000 characters, shortened by trainkit; the full value is in config.yaml]")
    assert short.startswith("x" * 5000)
    for limit in (1, 3, 10, 50, 200):
        assert len(shorten(text, limit)) <= limit
    assert shorten("short", 10) == "short"


def test_names_keep_to_the_characters_and_length_a_tracker_accepts():
    assert safe_name("optimizer.betas[0]", 250) == "optimizer.betas_0_"
    long = "a." * 200
    short = safe_name(long, 250)
    assert len(short) == 250 and short != safe_name("b" + long, 250)  # still unique


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_git_commit_is_read_from_the_repository_files(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=repo)
    assert git_commit(repo / "sub") is None  # no commit yet
    (repo / "f.txt").write_text("x")
    _git("add", "f.txt", cwd=repo)
    _git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "one", cwd=repo)
    head = _git("rev-parse", "HEAD", cwd=repo)
    assert git_commit(repo / "sub") == head  # from a folder inside the work tree
    _git("pack-refs", "--all", cwd=repo)  # the branch now lives in packed-refs only
    assert git_commit(repo) == head
    _git("worktree", "add", "-q", str(tmp_path / "wt"), "-b", "other", cwd=repo)  # .git is a file there
    assert git_commit(tmp_path / "wt") == head
    _git("checkout", "-q", "--detach", cwd=repo)
    assert git_commit(repo) == head
    assert git_commit(tmp_path / "elsewhere") is None
