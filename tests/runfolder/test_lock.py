"""The run folder's lock (runfolder/lock.py): exclusive, named holder, gone with its process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, subprocess_env
from trainkit.errors import CheckpointError, RunFolderBusyError
from trainkit.runfolder.lock import check_free, hold, is_locked, read_holder

HOLDER = """
import sys, time
from trainkit.runfolder.lock import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def other_process(tmp_path):
    """Start a process that holds a folder's lock; returns (process, folder)."""
    started = []

    def start(folder):
        env = subprocess_env()
        env["PYTHONPATH"] = str(REPO / "src")
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_holder_is_written_into_the_lock_file_and_everything_goes_when_released(tmp_path):
    run = tmp_path / "runs" / "a"
    with hold(run):
        info = read_holder(run)
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert abs(info["started"] - time.time()) < 60
    # nothing was written besides the lock: the folders made for it are gone too
    assert not (tmp_path / "runs").exists()


def test_a_folder_that_received_files_stays(tmp_path):
    run = tmp_path / "a"
    with hold(run):
        (run / "config.yaml").write_text("x")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path, other_process):
    run = tmp_path / "a"
    proc = other_process(run)
    assert is_locked(run) is True
    with pytest.raises(RunFolderBusyError) as caught:
        with hold(run):
            pass
    message = str(caught.value)
    assert message.startswith(f"{run} is in use by another trainkit process (pid {proc.pid} on {socket.gethostname()}")
    assert caught.value.exit_code == 2
    with pytest.raises(RunFolderBusyError, match=f"pid {proc.pid}"):
        check_free(run)
    assert json.loads((run / "run.lock").read_text())["pid"] == proc.pid  # the loser changed nothing


def test_kill_9_leaves_no_stale_lock(tmp_path, other_process):
    run = tmp_path / "a"
    proc = other_process(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "run.lock").exists() and is_locked(run) is False  # the file stays, the lock does not
    with hold(run):
        assert read_holder(run)["pid"] == os.getpid()
    check_free(run)


def test_nested_holds_in_one_thread_are_one_hold_and_other_threads_are_refused(tmp_path):
    run = tmp_path / "a"
    errors = []

    def other_thread():
        try:
            with hold(run):
                pass
        except RunFolderBusyError as exc:
            errors.append(exc)

    with hold(run):
        with hold(run):
            pass
        assert is_locked(run) is True  # still held after the inner block
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"pid {os.getpid()}" in str(errors[0])


def test_a_waiting_process_gets_the_lock_once_it_is_released(tmp_path, other_process, monkeypatch):
    from trainkit.runfolder import lock

    run = tmp_path / "a"
    proc = other_process(run)
    monkeypatch.setattr(lock, "WAIT_SECONDS", 30.0)
    threading.Timer(0.5, proc.kill).start()  # the holder dies while we wait for it
    with hold(run):
        assert read_holder(run)["pid"] == os.getpid()


def test_is_locked_without_a_lock_file_is_unknown(tmp_path):
    assert is_locked(tmp_path) is None


def test_a_run_folder_that_cannot_be_created_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=f"cannot create run folder {blocker}/a: "):
        with hold(blocker / "a"):
            pass
