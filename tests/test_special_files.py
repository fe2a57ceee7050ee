"""Paths that are not plain files: one line each, and never a hang.

A config, checkpoint or image path that is a named pipe (opening it to read blocks until a
writer comes), /dev/zero (never ends), a folder, a symlink loop, a file without read
permission, or a file that grows while it is read.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import trainkit
from conftest import TRAINKIT, subprocess_env, tiny_config, write_config

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")

KINDS = ["fifo", "dev_zero", "folder", "symlink_loop", "unreadable"]


def _make(kind: str, path: Path, monkeypatch: Any) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "symlink_loop":
        path.symlink_to(path.with_name(path.name + ".other"))
        path.with_name(path.name + ".other").symlink_to(path)
    elif kind == "unreadable":
        path.write_text("name: x\n")
        path.chmod(0)
        if os.geteuid() == 0:  # root reads anything: make the open fail as it would for a user
            real_open = os.open

            def refusing(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
                if os.fspath(file) == os.fspath(path):
                    raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
                return real_open(file, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", refusing)
    return path


MESSAGES = {
    "fifo": "is a named pipe (FIFO), not a file",
    "dev_zero": "is a character device, not a file",
    "folder": "is a folder, not a file",
    "symlink_loop": "symlink loop",
    "unreadable": "permission denied",
}


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if a command blocks."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError("the command blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("special")
    trainkit.train(tiny_config(tmp, trainer={"epochs": 1}), quiet=True)
    return tmp / "ckpt" / "tiny"


def _limited() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # a reader that slurps /dev/zero fails


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("no_hang")
def test_config_path(cli, tmp_path, monkeypatch, kind):
    path = _make(kind, tmp_path / "c.yaml", monkeypatch)
    # /dev/zero: in a child with a memory limit (a regression must fail, not fill the machine);
    # validate only, since train imports torch, which needs more address space than that
    for command in ("validate",) if kind == "dev_zero" else ("validate", "train"):
        if kind == "dev_zero":
            run = subprocess.run(
                [*TRAINKIT, command, str(path)],
                capture_output=True,
                text=True,
                env=subprocess_env(),
                timeout=120,
                preexec_fn=_limited,
            )
            code, out, err = run.returncode, run.stdout, run.stderr
        else:
            code, out, err = cli(command, path)
        assert code == 2 and out == "", err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert MESSAGES[kind] in err, err


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("no_hang")
def test_checkpoint_path(cli, tmp_path, monkeypatch, trained, kind):
    path = _make(kind, tmp_path / "x.pt", monkeypatch)
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    runs = {
        "eval": ["eval", "--ckpt", path],
        "resume": ["resume", path],
        "predict": ["predict", "--ckpt", path, image],
        "export": ["export", "--ckpt", path, "-o", tmp_path / "m.pt2"],
    }
    for name, args in runs.items():
        if kind == "folder" and name != "resume":
            continue  # a folder means a run folder there: tested below
        code, out, err = cli(*args)
        assert code in (1, 2) and out == "", (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        if not (kind == "folder" and name == "resume"):
            assert MESSAGES[kind] in err, (name, err)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "symlink_loop"])
@pytest.mark.usefixtures("no_hang")
def test_inside_a_run_folder(cli, tmp_path, monkeypatch, kind):
    """last.pt / best.pt / latest.json of a run folder replaced by something odd."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("last.pt", "best.pt", "latest.json"):
        _make(kind, folder / name, monkeypatch)
    for args in (["resume", folder], ["eval", "--ckpt", folder], ["predict", "--ckpt", folder, folder / "x.png"]):
        code, out, err = cli(*args)
        assert code in (1, 2) and err.startswith("error: ") and err.count("\n") == 1, (args, err)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
@pytest.mark.usefixtures("no_hang")
def test_image_path(cli, tmp_path, monkeypatch, trained, kind):
    image = _make(kind, tmp_path / "digit.png", monkeypatch)
    code, out, err = cli("predict", "--ckpt", trained / "last.pt", image)
    assert code == 2 and out == ""
    assert err.strip() == f"error: {image} {MESSAGES[kind]}; give an image file"


class _Grower:
    """Appends to a file from a thread until stopped, as a process writing it would."""

    def __init__(self, path: Path, chunk: bytes):
        self.path, self.chunk, self.stop = path, chunk, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with open(self.path, "ab") as f:
            while not self.stop.is_set():
                f.write(self.chunk)
                f.flush()
                time.sleep(0.0005)

    def __enter__(self) -> _Grower:
        self.thread.start()
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.usefixtures("no_hang")
def test_a_config_that_grows_while_read(cli, tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    with _Grower(path, b"# " + b"x" * 8190 + b"\n"):
        code, out, err = cli("validate", path)
    # read up to the cap: either it was still small enough (then it is a config with
    # comments) or it is refused as too large; one line either way
    assert code in (0, 2), err
    if code == 2:
        assert err == f"error: cannot read config file {path}: is larger than 1024 KiB\n"


@pytest.mark.usefixtures("no_hang")
def test_a_checkpoint_that_grows_while_read(cli, tmp_path, trained):
    path = tmp_path / "growing.pt"
    path.write_bytes((trained / "last.pt").read_bytes())
    with _Grower(path, os.urandom(4096)):
        for args in (["eval", "--ckpt", path], ["resume", path]):
            code, out, err = cli(*args)
            assert code in (0, 1, 2), err  # 0: read before it grew past the zip's end record
            if code:
                assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.skipif(sys.platform != "linux", reason="/dev/zero and /proc are Linux's here")
@pytest.mark.usefixtures("no_hang")
def test_dev_zero_directly(cli):
    run = subprocess.run(
        [*TRAINKIT, "validate", "/dev/zero"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        preexec_fn=_limited,
    )
    assert (run.returncode, run.stderr) == (
        2,
        "error: /dev/zero: is a character device, not a file; give a config file\n",
    )
    code, out, err = cli("eval", "--ckpt", "/dev/zero")
    assert (code, err) == (2, "error: /dev/zero is a character device, not a file; give a checkpoint file\n")
