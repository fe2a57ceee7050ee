"""The tracker's background thread (tracking/_worker.py): order, batching, outages, what is lost."""

from __future__ import annotations

import logging
import threading
import time

from trainkit.tracking._worker import RECORDS, Worker


class Fake:
    """A tracker that records what it got, and fails while `down` is set."""

    def __init__(self):
        self.got: list[tuple[str, list]] = []
        self.down = threading.Event()
        self.reject = set()

    def handle(self, kind, payloads):
        if self.down.is_set():
            raise ConnectionError("connection refused")
        if kind in self.reject:
            raise ValueError(f"{kind} is not accepted")
        self.got.append((kind, list(payloads)))

    @staticmethod
    def permanent(exc):
        return isinstance(exc, ValueError)


def _records(fake):
    return [p for kind, payloads in fake.got if kind == RECORDS for p in payloads]


def test_everything_arrives_in_order_and_records_are_batched():
    fake = Fake()
    fake.down.set()  # hold the thread at the first item so that the rest queues up behind it
    worker = Worker("fake", fake.handle, fake.permanent, retry_seconds=0.05)
    worker.submit("open", "run", "the run")
    for i in range(5):
        worker.submit(RECORDS, i, "metric records")
    worker.submit("artifact", "best.pt", "best.pt")
    worker.submit(RECORDS, 5, "metric records")
    fake.down.clear()
    worker.close(patience=10)
    assert fake.got == [("open", ["run"]), (RECORDS, [0, 1, 2, 3, 4]), ("artifact", ["best.pt"]), (RECORDS, [5])]
    assert not worker.lost


def test_a_tracker_that_comes_back_loses_nothing_and_is_announced(caplog):
    fake = Fake()
    worker = Worker("fake", fake.handle, fake.permanent, retry_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        worker.submit(RECORDS, 0, "metric records")
        time.sleep(0.2)
        fake.down.set()
        for i in range(1, 50):
            worker.submit(RECORDS, i, "metric records")
        time.sleep(0.3)  # several failed tries
        fake.down.clear()
        worker.close(patience=10)
    assert _records(fake) == list(range(50)) and not worker.lost
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once when it went away, once when it came back
    assert warnings[0] == "fake failed (connection refused); training goes on, and trainkit tries again every 0 s"
    assert warnings[1] == "fake is reachable again; logging goes on"


def test_a_tracker_still_away_at_the_end_gets_one_more_try_then_is_given_up():
    fake = Fake()
    worker = Worker("fake", fake.handle, fake.permanent, retry_seconds=3600)  # no retry before the end
    worker.submit(RECORDS, 0, "metric records")
    time.sleep(0.2)
    fake.down.set()
    for i in range(1, 4):
        worker.submit(RECORDS, i, "metric records")
    worker.submit("artifact", "best.pt", "best.pt")
    started = time.monotonic()
    worker.close(patience=60)
    assert time.monotonic() - started < 10  # the hour-long retry pause does not hold up the end
    assert _records(fake) == [0]
    assert worker.lost == {"metric records": 3, "best.pt": 1}
    assert worker.first_error == "connection refused"
    worker.submit(RECORDS, 9, "metric records")  # after the end: counted, never sent
    assert worker.lost["metric records"] == 4


def test_a_rejected_item_is_dropped_with_one_warning_and_the_rest_goes_on(caplog):
    fake = Fake()
    fake.reject.add("artifact")
    worker = Worker("fake", fake.handle, fake.permanent, retry_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        worker.submit("artifact", "a", "step-1.pt")
        worker.submit("artifact", "b", "step-1.pt")
        worker.submit(RECORDS, 1, "metric records")
        worker.close(patience=10)
    assert _records(fake) == [1]
    assert worker.lost == {"step-1.pt": 2}
    assert [r.getMessage() for r in caplog.records] == ["fake rejected step-1.pt: artifact is not accepted"]


def test_a_call_that_hangs_is_abandoned_after_the_patience():
    release = threading.Event()

    def hang(kind, payloads):
        release.wait(30)

    worker = Worker("fake", hang, lambda exc: False)
    worker.submit("finish", "FINISHED", "the run's final status")
    started = time.monotonic()
    worker.close(patience=0.5)
    assert time.monotonic() - started < 5
    assert worker.lost == {"the run's final status": 1}
    release.set()
