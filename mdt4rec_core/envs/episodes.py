"""Offline episodes cut by a simulator's quit rule: the logged sequence is replayed through the rule, so training
episodes end where a simulated user would have left."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mdt4rec_core.data.episodes import user_starts
from mdt4rec_core.envs.quit_rules import QuitRule, cut_episodes, quit_lag


@dataclass(frozen=True)
class QuitRuleEpisodes:
    """EpisodeRule: an episode ends at the step where ``quit_rule`` fires (it counts) or after ``max_steps`` steps.

    ``events`` must carry ``action`` as indices of the catalogue the rule was built on; ``environment`` names that
    environment (its version) for the trajectory version hash.
    """

    quit_rule: QuitRule
    max_steps: int
    environment: str

    def episode_starts(self, events: pl.DataFrame) -> pl.Series:
        new_user = events.select(user_starts()).to_series().to_numpy()
        lag = quit_lag(self.quit_rule, events["action"].to_numpy(), new_user)
        return pl.Series("episode_start", cut_episodes(lag, new_user, self.max_steps))

    def fingerprint(self) -> dict:
        return {
            "rule": "quit",
            **self.quit_rule.describe(),
            "max_steps": self.max_steps,
            "environment": self.environment,
        }
