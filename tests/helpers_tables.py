"""Tables written by the tests from known rules, and configs that train on them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from conftest import tiny_config

COLORS = ["blue", "green", "red"]
# regression: price = 3 x0 - 2 x1 + 0.5 x2 + 4 [color = green] + 100 (+ x3 with weight 0)
COEFFICIENTS = {"x0": 3.0, "x1": -2.0, "x2": 0.5, "x3": 0.0}
GREEN, INTERCEPT = 4.0, 100.0


def rule_columns(n: int, seed: int = 0) -> dict[str, list[Any]]:
    """Four numeric features (x3 is noise), a colour, a class from a linear rule and a price
    from known coefficients."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)) * np.array([1.0, 2.0, 0.5, 1.0]) + np.array([0.0, 1.0, -3.0, 5.0])
    color = rng.choice(COLORS, n)
    score = 1.5 * x[:, 0] - 1.0 * (x[:, 1] - 1.0) + 2.0 * (x[:, 2] + 3.0) + 1.0 * (color == "red") - 0.3
    price = x @ np.array(list(COEFFICIENTS.values())) + GREEN * (color == "green") + INTERCEPT
    return {
        **{f"x{i}": [float(v) for v in x[:, i]] for i in range(4)},
        "color": list(color),
        "label": ["pos" if s > 0 else "neg" for s in score],
        "price": [float(v) for v in price],
    }


def write_csv(path: Path, columns: dict[str, list[Any]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    names = list(columns)
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(names)
        writer.writerows(zip(*(columns[n] for n in names), strict=True))
    return path


def write_parquet(path: Path, columns: dict[str, list[Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def without(columns: dict[str, list[Any]], *names: str) -> dict[str, list[Any]]:
    return {k: v for k, v in columns.items() if k not in names}


def table_config(tmp_path: Path, path: Path, target: str, name: str = "table", **data: Any) -> dict[str, Any]:
    """A quick run on a table: a small MLP, Adam, batches of 32 on the CPU."""
    config = tiny_config(tmp_path, name=name)
    config["model"] = {"name": "mlp", "hidden": [16]}
    config["data"] = {"name": "table", "path": str(path), "target": target, "batch_size": 32, **data}
    config["optimizer"] = {"name": "adam", "lr": 0.02}
    config["trainer"] = {"epochs": 3, "device": "cpu", "log_every": 5}
    return config
