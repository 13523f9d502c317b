"""Episode cutting rules: where one user's time-ordered interactions split into offline episodes.

A rule sees every user's interactions sorted by (user_id, timestamp) and marks the rows that start an episode. The
session rule below is vectorised; the simulators' quit rules plug in through the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import polars as pl

from mdt4rec_core.data.schema import TIMESTAMP, USER_ID


class EpisodeRule(Protocol):
    def episode_starts(self, events: pl.DataFrame) -> pl.Series:
        """Boolean per row: the row starts an episode. ``events`` is sorted by user, then time; a user's first row
        always starts one."""

    def fingerprint(self) -> dict:
        """Everything that changes the rule's output; part of the trajectory version hash."""


def user_starts() -> pl.Expr:
    """True on each user's first row (``events`` sorted by user)."""
    return (pl.col(USER_ID) != pl.col(USER_ID).shift(1)).fill_null(True)


def position_since(starts: pl.Expr) -> pl.Expr:
    """0-based position of each row since the last row where ``starts`` is true (global, no window functions)."""
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    return index - pl.when(starts).then(index).forward_fill()


@dataclass(frozen=True)
class SessionRule:
    """A new episode starts at a pause longer than ``gap_seconds`` (when set) and after every ``max_steps`` steps."""

    max_steps: int
    gap_seconds: float | None = None

    def episode_starts(self, events: pl.DataFrame) -> pl.Series:
        session_start = user_starts()
        if self.gap_seconds is not None:
            pause = (pl.col(TIMESTAMP) - pl.col(TIMESTAMP).shift(1)).dt.total_microseconds() > self.gap_seconds * 1e6
            session_start = session_start | pause.fill_null(True)
        starts = session_start | (position_since(session_start) % self.max_steps == 0)
        return events.select(starts.alias("episode_start")).to_series()

    def fingerprint(self) -> dict:
        return {"rule": "session", "max_steps": self.max_steps, "gap_seconds": self.gap_seconds}
