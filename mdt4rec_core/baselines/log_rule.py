"""A hand-written rule on what the logs hold, no learning: recommend the best-rated logged item that is far enough, in
the item-factor space of the trajectory build, from every item the episode has acted on.

It marks what the logs' item vectors and ratings allow without a model: with ``min_distance`` 0 it is a rating-aware
popularity (the best shrunk mean rating); raising ``min_distance`` trades rating for variety, which the quit rule
rewards in FB and NX_10 (no quit, repeats masked) does not.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from mdt4rec_core.config import StrictModel
from mdt4rec_core.data.item_quality import shrunk_means
from mdt4rec_core.envs.simulator import Observation

_CHUNK = 64
"""Episodes whose (acted, items) distances are computed at once."""


class LogRuleConfig(StrictModel):
    min_distance: float = Field(0.3, ge=0, description="least item-factor distance to every item acted on")
    prior_weight: float = Field(20.0, ge=0, description="ratings of the global mean added to every item's mean")


def shrunk_mean_feedback(steps: pl.DataFrame, items: int, prior_weight: float) -> np.ndarray:
    """(items,) each item's mean logged feedback, shrunk toward the global mean by ``prior_weight`` pseudo-ratings."""
    return shrunk_means(steps["action"].to_numpy(), steps["feedback"].to_numpy(), items, prior_weight)


class LogRulePolicy:
    """``item_factors`` (I, D) the trajectory build's item vectors; ``quality`` (I,) e.g. ``shrunk_mean_feedback``."""

    def __init__(self, item_factors: np.ndarray, quality: np.ndarray, min_distance: float):
        self.factors = item_factors.astype(np.float32)
        self.quality = quality.astype(np.float64)
        self.min_distance = min_distance

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        """(B,) the allowed item of best quality among those at least ``min_distance`` from the initial item and the
        history; where no allowed item is that far, the allowed item of best quality."""
        acted = np.concatenate([observation.initial_items[:, None], observation.history], axis=1)  # (B, 1 + T)
        actions = np.empty(len(acted), dtype=np.int64)
        for start in range(0, len(acted), _CHUNK):
            rows = slice(start, start + _CHUNK)
            scores = np.broadcast_to(self.quality, (len(acted[rows]), len(self.quality))).copy()  # (b, I)
            if observation.allowed is not None:
                scores[~observation.allowed[rows]] = -np.inf
            too_close = self._nearest_distance(acted[rows]) < self.min_distance  # (b, I)
            far_scores = np.where(too_close, -np.inf, scores)
            has_far = np.isfinite(far_scores).any(axis=1)
            actions[rows] = np.where(has_far, far_scores.argmax(axis=1), scores.argmax(axis=1))
        return actions

    def _nearest_distance(self, acted: np.ndarray) -> np.ndarray:
        """(b, I) each item's distance to the nearest acted item of its row; ``acted`` (b, T), -1 = none."""
        vectors = self.factors[np.maximum(acted, 0)]  # (b, T, D)
        norms = (self.factors**2).sum(axis=1)  # (I,)
        squared = (vectors**2).sum(-1)[..., None] + norms - 2.0 * vectors @ self.factors.T  # (b, T, I)
        squared[acted < 0] = np.inf
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))
