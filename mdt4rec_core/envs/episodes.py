"""Offline episodes cut by a simulator's quit rule: the logged sequence is replayed through the rule, so training
episodes end where a simulated user would have left. ``stored_episode_rule`` picks the rule a trajectory build of a
stored dataset cuts by."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mdt4rec_core.config import DatasetConfig, TrajectoryConfig
from mdt4rec_core.data.episodes import EpisodeRule, user_starts
from mdt4rec_core.data.store import Store
from mdt4rec_core.data.trajectories import episode_rule
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


def stored_episode_rule(store: Store, dataset: DatasetConfig, config: TrajectoryConfig) -> EpisodeRule:
    """``config.cut_by``: ``session`` (``data.trajectories.episode_rule``), or ``quit_rule`` (the quit rule of the
    dataset's environment under ``config.quit_rule_protocol`` or else ``config.protocol``, built or reused from the
    store, which must hold the dataset's interactions); ``auto`` is ``quit_rule`` for a dataset with a simulator."""
    cut_by = config.cut_by
    if cut_by == "auto":
        cut_by = "session" if dataset.environment is None else "quit_rule"
    if cut_by == "session":
        return episode_rule(config)
    # Imported here: the simulator (and torch with it) is only needed when episodes are cut by its quit rule.
    from mdt4rec_core.envs.build import build_or_load

    environment, _ = build_or_load(store, dataset, config.quit_rule_protocol or config.protocol)
    return QuitRuleEpisodes(environment.quit_rule, config.max_episode_steps, environment.info.version)
