"""A run's epoch records as a table, one row per epoch and each metric once.

The CLI prints the epoch lines as a run goes (one per epoch, terminal or pipe) and not this
table as well; it is here for tools that summarise finished runs."""

from __future__ import annotations

from typing import Any

from trainkit.training.progress import _fmt, shown_metrics


def summary_table(history: list[dict[str, Any]], title: str) -> Any:
    """A rich Table of the epoch records."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    keys = ["epoch", "step", *shown_metrics(history), "epoch_time"]  # each metric once
    for key in keys:
        table.add_column("epoch time s" if key == "epoch_time" else key.replace("_", " "), justify="right")
    for record in history:
        table.add_row(
            *(f"{record[k]:.1f}" if k == "epoch_time" and k in record else _fmt(record.get(k, "")) for k in keys)
        )
    return table
