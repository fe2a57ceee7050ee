"""The run folder's text files: metrics.jsonl (the source of truth), status.json, TensorBoard.

No torch at import (TensorBoard's writer is imported only when asked for), so `trainkit
runs` can use the readers here and stay instant.

metrics.jsonl gets one JSON object per line: a "train" record every `log_every` steps,
an "epoch" record per epoch. A checkpoint remembers how many bytes of it existed when it
was written; resuming cuts the file back to that length, so the records of steps that
are about to be redone do not appear twice and the history equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainkit.runfolder.fileio import atomic_write_text, write_failed
from trainkit.runfolder.layout import METRICS, STATUS, TENSORBOARD


class RunLog:
    def __init__(
        self, run_dir: Path, truncate_to: int | None = None, tensorboard: bool = False, purge_step: int | None = None
    ):
        self.path = run_dir / METRICS
        run_dir.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and self.path.exists() and self.path.stat().st_size > truncate_to:
            with open(self.path, "rb+") as f:
                f.truncate(truncate_to)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step is the step of the checkpoint being resumed: drop the events a killed run
            # wrote after it. TensorBoard hides events at steps >= its purge_step, and the events
            # of the checkpoint's own step were written before it was saved, so they stay: + 1.
            tb_purge = None if purge_step is None else purge_step + 1
            self._tb = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=tb_purge)

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        if self._tb is not None and record["type"] in ("train", "epoch"):  # not a resume's "change" record
            prefix = "train" if record["type"] == "train" else "epoch"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch", "type"):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def sync(self) -> int:
        """Make every record so far durable; returns the file length a checkpoint records."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        if self._tb is not None:
            self._tb.flush()
        return self._file.tell()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # a full disk: the error that stopped the run is the one to report
            pass
        if self._tb is not None:
            self._tb.close()


def read_records(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order; a line that is not a JSON object (cut
    short by a kill -9, or damaged on disk: bytes that are not even UTF-8) is left out, and a
    file that cannot be read at all is no records (a resume then fails opening it to append)."""
    path = Path(run_dir) / METRICS
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill -9 before the truncation on resume
        if isinstance(record, dict) and (kind is None or record.get("type") == kind):
            records.append(record)
    return records


def write_status(run_dir: Path, status: str, **info: Any) -> None:
    """complete | running | interrupted | failed, with progress, for `trainkit runs`."""
    payload = {"status": status, "pid": os.getpid(), "updated": time.time(), **info}
    atomic_write_text(Path(run_dir) / STATUS, json.dumps(payload) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A small JSON object file (status.json, latest.json); {} when missing or damaged."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_status(run_dir: Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / STATUS)
