"""Logged action sequences: every user's actions of a steps frame (TRAJECTORY_SCHEMA) in time order, all episodes
concatenated (sorted by episode, then step), as one flat array with per-user offsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mdt4rec_core.data.schema import USER_ID
from mdt4rec_core.errors import InputError


@dataclass(frozen=True)
class LoggedSequences:
    """``items`` (N,) int64 catalogue indices; user k's sequence is ``items[offsets[k]:offsets[k + 1]]``
    (``offsets`` (U + 1,)); ``users`` (U,) their ids, sorted."""

    users: list[str]
    offsets: np.ndarray
    items: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]


def logged_sequences(steps: pl.DataFrame) -> LoggedSequences:
    """The sequences of ``steps`` (needs ``user_id``, ``episode``, ``step``, ``action``); an empty frame is an
    InputError."""
    if steps.height == 0:
        raise InputError("no logged steps to learn from")
    ordered = steps.select(USER_ID, "episode", "step", "action").sort(USER_ID, "episode", "step")
    counts = ordered.group_by(USER_ID, maintain_order=True).len()
    offsets = np.zeros(counts.height + 1, dtype=np.int64)
    np.cumsum(counts["len"].to_numpy(), out=offsets[1:])
    items = ordered["action"].to_numpy().astype(np.int64)
    if (items < 0).any():
        raise InputError("logged actions must be catalogue indices (>= 0)")
    return LoggedSequences(users=counts[USER_ID].to_list(), offsets=offsets, items=items)
