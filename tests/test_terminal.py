"""Terminal manners: shell completion, no bars or colour codes in pipes or with NO_COLOR,
--quiet leaves only the result line, and --help never waits for torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import TRAINKIT, subprocess_env, tiny_config, write_config
from helpers_ecosystem import ANSI

NEW_COMMANDS = ["schema", "runs", "plot", "predict", "export"]


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path))


def _run(args, env=None, **kwargs):
    return subprocess.run(
        [*TRAINKIT, *map(str, args)], capture_output=True, text=True, timeout=300, env=env or subprocess_env(), **kwargs
    )


SCRIPTS = {
    "bash": "complete -o default -F _trainkit_completion trainkit",
    "zsh": "#compdef trainkit",
    "fish": "complete --command trainkit",
}


@pytest.mark.parametrize("shell", SCRIPTS)
def test_show_completion_prints_the_script_of_the_users_shell(cli, monkeypatch, shell):
    # Typer detects the shell from the parent processes (shellingham); pretend it found `shell`.
    import typer._completion_shared as shared

    monkeypatch.setattr(shared.shellingham, "detect_shell", lambda: (shell, f"/bin/{shell}"))
    code, out, err = cli("--show-completion", shell)
    assert code == 0, err
    assert SCRIPTS[shell] in out
    assert f"_TRAINKIT_COMPLETE=complete_{shell}" in out


def test_show_completion_for_a_named_shell(monkeypatch):
    # With detection off, Typer takes the shell as the option's value: `--show-completion bash`.
    from typer.testing import CliRunner

    from trainkit.cli import app

    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = CliRunner().invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0, result.stderr
    assert SCRIPTS["bash"] in result.stdout and "_TRAINKIT_COMPLETE=complete_bash" in result.stdout


def test_help_does_not_import_torch():
    # Every command's --help answers without importing torch (the slow part of startup).
    code = (
        "import sys\nfrom trainkit.cli import app\n"
        "for command in sys.argv[1:]:\n"
        "    try:\n        app([command, '--help'] if command != '-' else ['--help'], prog_name='trainkit')\n"
        "    except SystemExit as exc:\n        assert exc.code == 0, command\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    commands = ["-", "train", "resume", "eval", "validate", "ls", *NEW_COMMANDS]
    run = subprocess.run(
        [sys.executable, "-c", code, *commands], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert run.returncode == 0, run.stderr
    for command in NEW_COMMANDS:
        assert f"Usage: trainkit {command}" in run.stdout


def test_piped_output_has_no_bars_and_no_colour(config_path):
    run = _run(["train", config_path])
    assert run.returncode == 0, run.stderr
    for stream in (run.stdout, run.stderr):
        assert not ANSI.search(stream), repr(stream[:300])
        assert "\r" not in stream and "batch/s" not in stream  # no tqdm bar
    lines = run.stderr.splitlines()
    # one start line (with the CLI's CPU speed-up, said once), then one line per epoch
    assert lines[0] == (
        "training tiny on cpu: cnn (932 parameters), synthetic_images (96 train / 40 test), batch 16, 2 epochs; "
        "host memory: freed blocks kept for reuse (trainer.host_memory=default leaves malloc as it is)"
    )
    assert len(lines) == 3
    assert lines[1].startswith("epoch 1/2: train_loss ") and lines[2].startswith("epoch 2/2: train_loss ")
    # the result line alone on stdout: the epochs are not repeated as a table
    (result,) = run.stdout.splitlines()
    assert result.startswith("trained 2 epochs, 12 steps; best val_accuracy")
    assert all(line == line.rstrip() for line in lines + [result])  # no trailing spaces


def test_quiet_leaves_only_the_result_line(config_path):
    run = _run(["train", config_path, "--quiet"])
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trained 2 epochs, 12 steps; best val_accuracy ")
    assert lines[0].endswith(f"checkpoints in {config_path.parent / 'ckpt' / 'tiny'}")


def _in_terminal(args, env_extra: dict[str, str], cwd) -> str:
    """Run trainkit with stdout and stderr on a pseudo-terminal of 120x40; returns all it wrote."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**subprocess_env(), "TERM": "xterm-256color", **env_extra}
    env.pop("NO_COLOR", None) if "NO_COLOR" not in env_extra else None
    proc = subprocess.Popen([*TRAINKIT, *map(str, args)], stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_no_color_in_a_terminal_gives_no_escape_codes(config_path, tmp_path):
    # In a terminal, bars and styles are on; the check below would see them.
    shown = _in_terminal(["train", config_path, "--overwrite"], {}, tmp_path)
    assert "batch/s" in shown and ANSI.search(shown)
    assert "validating" in shown  # a bar while the validation set is evaluated
    assert shown.count("epoch 2/2: train_loss") == 1 and "epoch time s" not in shown  # epoch lines, no table
    # NO_COLOR=1: the same run, not one escape code and no bar.
    plain = _in_terminal(["train", config_path, "--overwrite"], {"NO_COLOR": "1"}, tmp_path)
    assert not ANSI.search(plain), repr(ANSI.findall(plain)[:5])
    assert "batch/s" not in plain
    assert "trained 2 epochs, 12 steps" in plain


def test_new_commands_print_no_escape_codes(cli, tmp_path):
    from trainkit.runfolder.runlog import write_status

    run_dir = tmp_path / "ckpt" / "fake"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: fake\nmodel: {name: mlp}\ndata: {name: mnist}\n")
    write_status(run_dir, "failed", epoch=1, epochs=3, step=9, best_metric=0.5, monitor="val_accuracy")
    outputs = {}
    for name, args in {
        "runs": ["runs", tmp_path / "ckpt"],
        "schema": ["schema"],
        "none": ["runs", tmp_path / "x"],
    }.items():
        code, out, err = cli(*args)
        assert not ANSI.search(out) and not ANSI.search(err)
        outputs[name] = out + err
    # each printed what it is for (a check that saw no output would see no escape codes either)
    assert "fake" in outputs["runs"] and "failed" in outputs["runs"]
    assert '"properties"' in outputs["schema"]
    assert outputs["none"].strip()  # "no runs" in some words
