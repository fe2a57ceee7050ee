"""`trainkit predict` for a model trained on a table: a prediction for every row of CSV/Parquet files.

The checkpoint's data record holds the plan training used (features, category vocabularies,
the training rows' means and standard deviations, the classes or the target's scale), and its
config the reading options (delimiter, encoding, decimal) and the `data.missing` rule. A new
file's rows go through the very code that encoded the training rows (`encode_inputs`), so the
model sees them as it saw those. The target column may be there or not; other extra columns
are ignored. A regression prediction is in the target's own units.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainkit.errors import CheckpointError, DataContentError, one_line
from trainkit.training.restore import Trained

CHUNK = 4096  # rows per forward pass


def predict_rows(trained: Trained, files: Sequence[str | Path], top_k: int) -> list[dict[str, Any]]:
    """For each row of each file, in order: its file, its row number as a spreadsheet shows it,
    and either the top-k classes with probabilities or the predicted value."""
    from trainkit.builtin.table_encode import Plan

    try:
        plan = Plan.from_record(trained.data_record["plan"])  # type: ignore[index]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{trained.source}: its table record is damaged ({type(exc).__name__}: {exc})") from None
    options = trained.cfg.data.options()
    results: list[dict[str, Any]] = []
    for path in files:
        file, inputs = _encoded(path, plan, options)
        with torch.inference_mode():
            chunks = [trained.model(torch.from_numpy(inputs[i : i + CHUNK])) for i in range(0, len(inputs), CHUNK)]
        results += _results(file, torch.cat(chunks).float(), plan, top_k)
    return results


def _encoded(path: str | Path, plan: Any, options: dict[str, Any]) -> tuple[Any, Any]:
    import numpy as np

    from trainkit.builtin.table_columns import kind_of, mostly_numbers
    from trainkit.builtin.table_encode import Raw, encode_inputs
    from trainkit.builtin.table_read import listing, read_table
    from trainkit.registry import did_you_mean

    file = read_table(
        "predict",
        str(path),
        delimiter=options.get("delimiter"),
        encoding=options.get("encoding", "utf8"),
        decimal=options.get("decimal", "."),
    )
    names = file.table.column_names
    lacking = [n for n in plan.features if n not in names]
    if lacking:
        hint = did_you_mean(lacking[0], names) if len(lacking) == 1 else ""
        raise DataContentError(
            f"{file.name}: lacks the column{'s' if len(lacking) > 1 else ''} "
            f"{listing([repr(n) for n in lacking])} the model was trained on{hint} "
            f"(it takes {listing([repr(n) for n in plan.features])})"
        )
    raw = Raw(file)
    missing = np.zeros(file.table.num_rows, dtype=bool)
    for name in plan.features:
        categorical = name in plan.categories
        if not categorical:
            kind = kind_of(file.table.column(name).type)
            if kind not in ("number", "empty"):
                typo = mostly_numbers(file, name, options.get("decimal", ".")) if kind == "text" else None
                raise DataContentError(typo or f"{file.name}: column '{name}' holds {kind}; the model takes numbers")
            infinite = np.flatnonzero(np.isinf(raw.numbers(name)))
            if len(infinite):
                where = file.rows(infinite)
                raise DataContentError(f"{file.name}: column '{name}' is infinite (or beyond float64) in {where}")
        missing |= raw.missing(name, categorical)
    if missing.any() and options.get("missing", "error") != "mean":
        raise DataContentError(
            f"{file.name}: values are missing in {file.rows(np.flatnonzero(missing))}; the model was trained with "
            f"data.missing: {options.get('missing', 'error')}, so it has no fill for them: complete those cells "
            "(a run trained with data.missing: mean fills them with the training rows' means and shares)"
        )
    return file, encode_inputs(raw, np.arange(file.table.num_rows), plan, "rows")


def _results(file: Any, outputs: torch.Tensor, plan: Any, top_k: int) -> list[dict[str, Any]]:
    rows = [file.row(i) for i in range(len(outputs))]
    if plan.classes is None:  # regression: back to the target's units
        values = (outputs[:, 0].double() * plan.target_std + plan.target_mean).tolist()
        return [{"file": file.name, "row": r, "prediction": v} for r, v in zip(rows, values, strict=True)]
    probabilities = torch.softmax(outputs, dim=1)
    top = probabilities.topk(min(top_k, len(plan.classes)), dim=1)
    return [
        {
            "file": file.name,
            "row": r,
            "predictions": [
                {"class": plan.classes[i], "index": i, "probability": p}
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            ],
        }
        for r, values, indices in zip(rows, top.values, top.indices, strict=True)
    ]


def format_rows(results: list[dict[str, Any]]) -> str:
    """One line per row: 'new.csv row 2: yes 97.1%, no 2.9%', or 'new.csv row 2: 12.5'."""
    from trainkit.tools.predict import format_classes

    lines = []
    for r in results:
        shown = f"{r['prediction']:.6g}" if "prediction" in r else format_classes(r)
        lines.append(f"{one_line(r['file'])} row {r['row']}: {shown}")
    return "\n".join(lines)
