"""A tracker's calls, made in order by a background thread, so training never waits on them.

The training thread only queues work (a deque append, no I/O). The thread works through the
queue in order; consecutive metric records go out as one call. When a call fails the
tracker is presumed away: one warning, then the same items are tried again every
`retry_seconds` while training goes on, so a server that restarts loses nothing. An error
the tracker reports about the request itself (a rejected value) is not retried: those
items are dropped with a warning. `close` waits for the queue to empty, but gives up when
nothing has got through for `patience` seconds or the tracker is still away, and `lost`
then counts what never reached it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("trainkit")

MAX_PENDING = 20_000  # items held while the tracker is away; newer ones are dropped beyond that
MAX_BATCH = 200  # records per batched call
RECORDS = "records"  # the one batched kind


@dataclass
class Item:
    kind: str  # RECORDS, or a single-shot kind ("open", "artifact", "finish", ...)
    payload: Any
    what: str  # how to name it if it is lost ("metric records", "best.pt", ...)


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Worker:
    def __init__(
        self,
        name: str,
        handle: Callable[[str, list[Any]], None],
        permanent: Callable[[BaseException], bool],
        retry_seconds: float = 30.0,
    ):
        self.name, self._handle, self._permanent, self.retry_seconds = name, handle, permanent, retry_seconds
        self._items: collections.deque[Item] = collections.deque()
        self._busy: list[Item] | None = None  # the batch being sent
        self._cond = threading.Condition()
        self._closing = self._abandoned = self._failing = False
        self._last_progress = time.monotonic()
        self.first_error: str | None = None
        self._rejected: set[str] = set()  # kinds of item already warned about
        self.lost: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._run, name=f"trainkit-{name}", daemon=True)
        self._thread.start()

    @property
    def failing(self) -> bool:
        """The last call failed (the tracker is presumed away until one succeeds)."""
        return self._failing or self._abandoned

    # -- the training thread
    def submit(self, kind: str, payload: Any, what: str) -> None:
        with self._cond:
            if self._abandoned or len(self._items) >= MAX_PENDING:
                self.lost[what] += 1
                return
            self._items.append(Item(kind, payload, what))
            self._cond.notify_all()

    def close(self, patience: float) -> None:
        """Wait until everything queued got through, or nothing has for `patience` seconds."""
        with self._cond:
            self._closing = True
            self._last_progress = time.monotonic()
            self._cond.notify_all()
            while (self._items or self._busy) and not self._abandoned:
                if time.monotonic() - self._last_progress > patience:
                    break
                self._cond.wait(0.1)
            self._abandoned = True
            for item in [*self._items, *(self._busy or [])]:  # a call still under way is not confirmed
                self.lost[item.what] += 1
            self._items.clear()
            self._busy = None
            self._cond.notify_all()

    # -- the background thread
    def _next(self) -> list[Item] | None:
        with self._cond:
            while not self._items and not self._abandoned and not self._closing:
                self._cond.wait()
            if self._abandoned or not self._items:
                return None
            batch = [self._items.popleft()]
            while batch[0].kind == RECORDS and self._items and self._items[0].kind == RECORDS:
                if len(batch) >= MAX_BATCH:
                    break
                batch.append(self._items.popleft())
            self._busy = batch
            return batch

    def _run(self) -> None:
        while (batch := self._next()) is not None:
            tried_while_closing = False
            while True:
                tried_while_closing = tried_while_closing or self._closing
                try:
                    self._handle(batch[0].kind, [item.payload for item in batch])
                except Exception as exc:  # a tracker's errors are many and its own: none may stop training
                    if self._retry(exc, batch, give_up=tried_while_closing):
                        continue
                else:
                    self._done(batch)
                break

    def _retry(self, exc: BaseException, batch: list[Item], give_up: bool) -> bool:
        """Note a failure; True to send the same items again (after a pause)."""
        text = first_line(exc)
        with self._cond:
            if self._busy is not batch:
                return False  # close() has counted it already
            self.first_error = self.first_error or text
            permanent = self._permanent(exc)
            if permanent or give_up:
                if permanent and batch[0].what not in self._rejected:
                    self._rejected.add(batch[0].what)
                    log.warning("%s rejected %s: %s", self.name, batch[0].what, text)
                for item in batch:
                    self.lost[item.what] += 1
                self._busy = None
                self._abandoned = self._abandoned or not permanent  # away at the end: stop trying
                self._cond.notify_all()
                return False
            if not self._failing:
                log.warning(
                    "%s failed (%s); training goes on, and trainkit tries again every %.0f s",
                    self.name,
                    text,
                    self.retry_seconds,
                )
            self._failing = True
            deadline = time.monotonic() + self.retry_seconds
            while not self._closing and time.monotonic() < deadline:  # closing: one last try at once
                self._cond.wait(deadline - time.monotonic())
            return not self._abandoned

    def _done(self, batch: list[Item]) -> None:
        with self._cond:
            if self._busy is batch:
                self._busy = None
            if self._failing:
                log.warning("%s is reachable again; logging goes on", self.name)
            self._failing = False
            self._last_progress = time.monotonic()
            self._cond.notify_all()
