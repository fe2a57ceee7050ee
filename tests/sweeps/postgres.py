"""A throwaway PostgreSQL server for the tests: a data folder in /tmp, a free port on 127.0.0.1.

The server binaries come from the system (`.ci/run` installs them with apt where missing);
Debian keeps them in /usr/lib/postgresql/<version>/bin, off the PATH. initdb refuses to run
as root, so as root the server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class Unavailable(Exception):
    """Why no server could be started (the tests that need one skip with this reason)."""


def _binaries() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    raise Unavailable("PostgreSQL's initdb is not installed (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self) -> None:
        self.bin = _binaries()
        self.prefix: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="trainkit-pg-"))
        if os.geteuid() == 0:  # initdb will not run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.folder, ignore_errors=True)
                raise Unavailable("running as root and there is no 'postgres' user to run the server as") from None
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.data = self.folder / "data"
        self.port = _free_port()
        self.url = f"postgresql://trainkit@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        result = subprocess.run([*self.prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise Unavailable(f"{Path(command[0]).name} failed: {(result.stderr or result.stdout).strip()[-300:]}")

    def start(self) -> Server:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "trainkit", "--auth=trust", "--no-sync", "-E", "UTF8"
        )
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.folder, ignore_errors=True)
