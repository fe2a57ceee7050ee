"""What a person watching sees during a run: tqdm bars and one line per epoch.

Everything goes to stderr, so `--json` and pipes stay clean (the CLI prints the final
summary, see tools/summary.py).
Bars and colour are off when stderr is not a terminal, when NO_COLOR is set, or with
--quiet (which leaves only errors and the final result).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


# A metric that repeats another under a second name: regression's validation loss is its MSE.
_SAME_AS = {"val_mse": "val_loss"}


def shown_metrics(records: list[dict[str, Any]]) -> list[str]:
    """The metric keys of epoch records worth showing: each once (val_mse is left out where it
    only repeats val_loss)."""
    keys = list(dict.fromkeys(k for r in records for k in r if k.startswith(("train_", "val_"))))
    return [
        k
        for k in keys
        if not (k in _SAME_AS and _SAME_AS[k] in keys and all(r.get(k) == r.get(_SAME_AS[k]) for r in records))
    ]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


class Reporter:
    def __init__(self, quiet: bool = False, enabled: bool = True):
        self.quiet = quiet or not enabled  # ranks other than 0 stay silent
        self.bars = not self.quiet and _interactive()
        self._bar: tqdm | None = None

    def progress(self, epoch: int, epochs: int, total: int, start: int) -> tqdm | None:
        if not self.bars:
            return None
        self._bar = tqdm(
            total=total,
            initial=start,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.2,
        )
        return self._bar

    def eval_progress(self, total: int) -> tqdm | None:
        """A bar while the validation set is evaluated (on a terminal only)."""
        if not self.bars:
            return None
        self._bar = tqdm(total=total, desc="validating", unit="batch", file=sys.stderr, leave=False, dynamic_ncols=True)
        return self._bar

    def record(self, record: dict[str, Any], epochs: int) -> None:
        if self.quiet:
            return
        if record["type"] == "train":
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        elif record["type"] == "epoch":
            keys = shown_metrics([record])
            parts = " ".join(f"{k} {_fmt(record[k])}" for k in keys)
            self.message(f"epoch {record['epoch']}/{epochs}: {parts} ({record['epoch_time']:.1f} s)")

    def message(self, text: str) -> None:
        if not self.quiet:
            (tqdm.write if self._bar is not None else print)(text, file=sys.stderr)
