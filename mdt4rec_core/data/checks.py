"""Flat views of interactions and trajectories for data validation.

Validation libraries check columns one value at a time; properties that span rows (return-to-go consistency, time
order within an episode, one terminal step per episode) and list columns are turned here into scalar columns whose
every value must lie in a range.
"""

from __future__ import annotations

import polars as pl

from mdt4rec_core.data.schema import FEEDBACK, ITEM_ID, TIMESTAMP, USER_ID


def interaction_view(accepted: pl.DataFrame) -> pl.DataFrame:
    """The canonical columns of a batch of events, as they will be stored."""
    return accepted.select(USER_ID, ITEM_ID, TIMESTAMP, FEEDBACK)


def trajectory_view(steps: pl.DataFrame) -> pl.DataFrame:
    """Scalar columns of a trajectory set (rows sorted by user, episode, step as built).

    Added columns: ``state_length``, ``state_item_min``/``state_item_max`` (catalogue indices in the state, -1 / -1
    when empty), ``return_to_go_residual`` (R_t - r_t - R_{t+1}, with R after the last step = 0), ``seconds_since_
    previous_step`` (0 at step 0), ``step_increment`` (1 for every step but an episode's first, where it is step + 1
    and so also 1), ``terminal_steps_in_episode``.
    """
    continues = pl.col("step") > 0
    next_in_episode = ~pl.col("done")
    return steps.select(
        USER_ID,
        "episode",
        "step",
        "action",
        "reward",
        "return_to_go",
        "done",
        pl.col("state_items").list.len().alias("state_length"),
        pl.col("state_items").list.min().fill_null(-1).alias("state_item_min"),
        pl.col("state_items").list.max().fill_null(-1).alias("state_item_max"),
        (
            pl.col("return_to_go")
            - pl.col("reward")
            - pl.when(next_in_episode).then(pl.col("return_to_go").shift(-1)).otherwise(0.0)
        ).alias("return_to_go_residual"),
        pl.when(continues)
        .then((pl.col(TIMESTAMP) - pl.col(TIMESTAMP).shift(1)).dt.total_seconds(fractional=True))
        .otherwise(0.0)
        .alias("seconds_since_previous_step"),
        pl.when(continues)
        .then(pl.col("step") - pl.col("step").shift(1))
        .otherwise(pl.col("step") + 1)
        .alias("step_increment"),
        pl.col("done").cast(pl.Int32).sum().over(USER_ID, "episode").alias("terminal_steps_in_episode"),
    )
