"""Each item's quality as the training logs show it: its mean logged reward, shrunk toward the mean of all rewards so
that rarely logged items are not ranked by a handful of ratings."""

from __future__ import annotations

import numpy as np

QUALITY_PRIOR_WEIGHT = 20.0
"""Pseudo-observations of the global mean added to every item's rewards (the log rule's default too)."""


def shrunk_means(items: np.ndarray, values: np.ndarray, n_items: int, prior_weight: float) -> np.ndarray:
    """(n_items,) float64: per item, (sum of its ``values`` + ``prior_weight`` x the mean of all values) / (its count +
    ``prior_weight``). ``items`` (S,) catalogue indices, ``values`` (S,) the reward or feedback of each; an item
    never logged gets the mean of all values."""
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    sums = np.bincount(items, weights=values.astype(np.float64), minlength=n_items)
    overall = sums.sum() / max(counts.sum(), 1.0)
    return (sums + prior_weight * overall) / (counts + prior_weight)
