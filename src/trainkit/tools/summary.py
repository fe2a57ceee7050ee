"""The table the CLI prints at the end of a run: one row per epoch record."""

from __future__ import annotations

from typing import Any

from trainkit.training.progress import _fmt


def summary_table(history: list[dict[str, Any]], title: str) -> Any:
    """A rich Table of the epoch records."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    keys = (
        ["epoch", "step"]
        + [k for k in (history[0] if history else {}) if k.startswith(("train_", "val_"))]
        + ["epoch_time"]
    )
    for key in keys:
        table.add_column("epoch time s" if key == "epoch_time" else key.replace("_", " "), justify="right")
    for record in history:
        table.add_row(
            *(f"{record[k]:.1f}" if k == "epoch_time" and k in record else _fmt(record.get(k, "")) for k in keys)
        )
    return table
