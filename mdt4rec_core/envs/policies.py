"""Policies that need no model: uniform random and most-popular. Both respect the mode's allowed items."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mdt4rec_core.envs.simulator import Observation


class Policy(Protocol):
    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        """(B,) item indices, one per live episode, each allowed by ``observation.allowed``."""


class RandomPolicy:
    def __init__(self, n_items: int):
        self.n_items = n_items

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        if observation.allowed is None:
            return rng.integers(self.n_items, size=len(observation.users))
        # A uniform draw among allowed items: the allowed item with the largest uniform key.
        keys = rng.random(observation.allowed.shape)
        keys[~observation.allowed] = -1.0
        return keys.argmax(axis=1)


class PopularityPolicy:
    """Recommend the allowed item with the most logged interactions (ties: lowest index).

    ``counts`` (I,): interactions per item in the data the policy is allowed to learn from.
    """

    def __init__(self, counts: np.ndarray):
        self.scores = counts.astype(np.float64)

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        if observation.allowed is None:
            return np.full(len(observation.users), int(self.scores.argmax()))
        scores = np.where(observation.allowed, self.scores[None, :], -np.inf)
        return scores.argmax(axis=1)
