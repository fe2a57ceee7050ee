"""The seeded, stratified test split of image folders and tables: how many of each class go to test.

Both data sets hold out `data.test_fraction` of their items when the user has no test files.
Each class gives its share, so a rare class is in both splits; the shares are rounded together
(largest remainder), so the test split is round(fraction * items) whatever the class sizes.
Rounding each class on its own would not be: 300 classes of 2 images at 0.25 would send a
third of the images to test, and classes of 4 images at 0.1 none at all.
"""

from __future__ import annotations

import numpy as np


def stratified_counts(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """For classes of `sizes` items, how many of each go to the test split: in all
    round(fraction * sum(sizes)), each class floor(fraction * size) plus one for the largest
    remainders (ties to the earlier class); every class keeps at least one item to train on."""
    sizes = np.asarray(sizes, dtype=np.int64)
    exact = fraction * sizes
    counts = np.minimum(np.floor(exact).astype(np.int64), np.maximum(sizes - 1, 0))
    short = round(fraction * int(sizes.sum())) - int(counts.sum())
    for c in np.argsort(-(exact - counts), kind="stable"):
        if short <= 0:
            break
        if counts[c] < sizes[c] - 1:
            counts[c] += 1
            short -= 1
    return counts
