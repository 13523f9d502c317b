"""Quit rules: when a simulated user leaves, given the items recommended so far in the episode.

One batched predicate per rule serves both the environments (many users per step) and the offline episode cutter
(every logged event at once). ``history`` holds the previous recommendations of the episode, most recent first,
-1 where there is none; a rule only ever looks at its first ``window`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

NO_ITEM = -1
NEVER = 1 << 30
"""``quit_lag`` of an event after which the user never leaves, however long the episode."""


class QuitRule(Protocol):
    window: int

    def quits(self, history: np.ndarray, new: np.ndarray) -> np.ndarray:
        """(B,) bool: the user leaves after ``new`` (B,) item indices, given ``history`` (B, >= window)."""

    def describe(self) -> dict:
        """The rule and its parameters, for reports and version hashes."""


@dataclass(frozen=True)
class DistanceQuit:
    """Leave when the new item lies closer than ``threshold`` to any of the last ``window`` recommended items.

    ``distances``: (I, I) float32 Euclidean distances between the items' columns of the reward matrix.
    """

    distances: np.ndarray
    threshold: float
    window: int

    def quits(self, history: np.ndarray, new: np.ndarray) -> np.ndarray:
        recent = history[:, : self.window]
        valid = recent != NO_ITEM
        close = self.distances[new[:, None], np.where(valid, recent, 0)] < self.threshold
        return (close & valid).any(axis=1)

    def describe(self) -> dict:
        return {"rule": "distance", "threshold": round(float(self.threshold), 4), "window": self.window}


@dataclass(frozen=True)
class RepeatQuit:
    """Leave when a feature of the new item (a category, a tag) already occurred more than ``max_occurrences`` times
    among the last ``window`` recommended items.

    ``features``: (I, F) bool, item -> feature membership. KuaiRec: categories, window 9, max_occurrences 1 ("occurred
    more than once"); KuaiRand-Pure: tags, window 10, max_occurrences 0 ("any tag repeats").
    """

    features: np.ndarray
    window: int
    max_occurrences: int
    name: str = "repeat"

    def quits(self, history: np.ndarray, new: np.ndarray) -> np.ndarray:
        recent = history[:, : self.window]
        valid = recent != NO_ITEM
        counts = (self.features[np.where(valid, recent, 0)] & valid[:, :, None]).sum(axis=1)  # (B, F)
        return (self.features[new] & (counts > self.max_occurrences)).any(axis=1)

    def describe(self) -> dict:
        return {
            "rule": self.name,
            "window": self.window,
            "max_occurrences": self.max_occurrences,
            "features": int(self.features.shape[1]),
        }


def quit_lag(rule: QuitRule, items: np.ndarray, new_user: np.ndarray) -> np.ndarray:
    """For every event of a time-ordered log: the fewest previous items of the same user that make the rule quit.

    ``items`` (N,) item indices sorted by user then time; ``new_user`` (N,) marks each user's first event. Returns
    (N,) int: L means the user leaves at this event if the episode holds at least L earlier items (NEVER: no
    history makes the user leave). Rules are monotone in the history, so L is found by growing the history one item
    at a time.
    """
    n, window = len(items), rule.window
    position = np.arange(n) - np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    history = np.full((n, window), NO_ITEM, dtype=np.int64)
    for lag in range(1, window + 1):
        shifted = np.concatenate([np.full(lag, NO_ITEM), items[:-lag]]) if lag < n else np.full(n, NO_ITEM)
        history[:, lag - 1] = np.where(position >= lag, shifted, NO_ITEM)
    lag_needed = np.full(n, NEVER, dtype=np.int64)
    for length in range(window, 0, -1):
        partial = history.copy()
        partial[:, length:] = NO_ITEM
        lag_needed[rule.quits(partial, items)] = length
    return lag_needed


def cut_episodes(lag_needed: np.ndarray, new_user: np.ndarray, max_steps: int) -> np.ndarray:
    """(N,) bool episode starts from replaying a log through a quit rule: an episode ends at the step where the user
    leaves (that step counts) or after ``max_steps`` steps; the next event starts a new one."""
    starts = np.zeros(len(lag_needed), dtype=bool)
    position = 0
    ended = True
    for k in range(len(lag_needed)):
        if ended or new_user[k]:
            starts[k], position = True, 0
        ended = lag_needed[k] <= position or position + 1 >= max_steps
        position += 1
    return starts
