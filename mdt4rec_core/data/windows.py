"""Training windows: random K-step slices of stored episodes, collated into padded TrajectoryBatch tensors.

Padding side is explicit: ``left`` puts the padding before a short window (the layout inference uses), ``right``
after it; the model reads ``step_mask`` and derives positions from it either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import torch

from mdt4rec_core.data.batch import TrajectoryBatch
from mdt4rec_core.data.schema import USER_ID

PaddingSide = Literal["left", "right"]


@dataclass(frozen=True)
class EpisodeArrays:
    """Every step of a trajectory set as flat arrays, episodes contiguous.

    ``starts``/``lengths`` (E,) locate each episode's steps; ``users`` (E,) its user id. Per step (S rows):
    ``state_items`` (S, N) catalogue indices with padding = ``items``, ``state_feedback`` (S, N), ``state_mask``
    (S, N), ``returns_to_go`` (S,), ``actions`` (S,), ``timesteps`` (S,).
    """

    starts: np.ndarray
    lengths: np.ndarray
    users: np.ndarray
    state_items: np.ndarray
    state_feedback: np.ndarray
    state_mask: np.ndarray
    returns_to_go: np.ndarray
    actions: np.ndarray
    timesteps: np.ndarray
    items: int

    def step_rows(self, episodes: np.ndarray) -> np.ndarray:
        """(steps,) the rows of every step of ``episodes`` (indices), episode by episode."""
        if not len(episodes):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.starts[e], self.starts[e] + self.lengths[e]) for e in episodes])


def episode_arrays(steps: pl.DataFrame, state_length: int, items: int) -> EpisodeArrays:
    """Flatten ``steps`` (TRAJECTORY_SCHEMA) into arrays; states longer than ``state_length`` keep their newest
    items."""
    steps = steps.sort(USER_ID, "episode", "step")
    width = pl.col("state_items").list.len().clip(upper_bound=state_length)
    padded = steps.select(
        pl.col("state_items")
        .list.tail(state_length)
        .list.concat(pl.lit([items] * state_length, pl.List(pl.Int32)))
        .list.head(state_length)
        .list.to_array(state_length)
        .alias("items"),
        pl.col("state_feedback")
        .list.tail(state_length)
        .list.concat(pl.lit([0.0] * state_length, pl.List(pl.Float32)))
        .list.head(state_length)
        .list.to_array(state_length)
        .alias("feedback"),
        width.alias("width"),
    )
    starts_mask = (steps["step"] == 0).to_numpy()
    starts = np.flatnonzero(starts_mask)
    lengths = np.diff(np.append(starts, steps.height))
    width = padded["width"].to_numpy()
    return EpisodeArrays(
        starts=starts,
        lengths=lengths,
        users=steps[USER_ID].to_numpy()[starts],
        state_items=padded["items"].to_numpy().astype(np.int64),
        state_feedback=padded["feedback"].to_numpy().astype(np.float32),
        state_mask=np.arange(state_length)[None, :] < width[:, None],
        returns_to_go=steps["return_to_go"].to_numpy().astype(np.float32),
        actions=steps["action"].to_numpy().astype(np.int64),
        timesteps=steps["step"].to_numpy().astype(np.int64),
        items=items,
    )


def sample_windows(
    arrays: EpisodeArrays,
    episodes: np.ndarray,
    batch_size: int,
    context: int,
    rng: np.random.Generator,
    padding_side: PaddingSide = "left",
    unconditioned_fraction: float = 0.0,
) -> TrajectoryBatch:
    """``batch_size`` windows: an episode from ``episodes`` (indices, drawn in proportion to their lengths), a
    uniformly drawn last step, and a first step drawn uniformly among the ``context`` steps up to it, so windows start
    at any step of an episode (the short histories the search compares are trained on). A fraction
    ``unconditioned_fraction`` of the windows (drawn independently) carry no returns-to-go (``conditioned`` false)."""
    weights = arrays.lengths[episodes] / arrays.lengths[episodes].sum()
    chosen = rng.choice(episodes, size=batch_size, p=weights)
    ends = (rng.random(batch_size) * arrays.lengths[chosen]).astype(np.int64)
    lengths = 1 + (rng.random(batch_size) * np.minimum(ends + 1, context)).astype(np.int64)
    conditioned = rng.random(batch_size) >= unconditioned_fraction
    return collate(arrays, chosen, ends, context, padding_side, lengths, conditioned)


def collate(
    arrays: EpisodeArrays,
    episodes: np.ndarray,
    ends: np.ndarray,
    context: int,
    padding_side: PaddingSide,
    lengths: np.ndarray | None = None,
    conditioned: np.ndarray | None = None,
) -> TrajectoryBatch:
    """Windows ending at step ``ends[b]`` of episode ``episodes[b]``, padded to ``context`` steps; each holds
    ``lengths[b]`` steps (default: as many as the episode has, up to ``context``) and carries its returns-to-go where
    ``conditioned[b]`` (default: every window)."""
    b, n, pad = len(episodes), arrays.state_items.shape[1], arrays.items
    items = np.full((b, context, n), pad, dtype=np.int64)
    feedback = np.zeros((b, context, n), dtype=np.float32)
    item_mask = np.zeros((b, context, n), dtype=bool)
    returns = np.zeros((b, context), dtype=np.float32)
    actions = np.full((b, context), pad, dtype=np.int64)
    timesteps = np.zeros((b, context), dtype=np.int64)
    step_mask = np.zeros((b, context), dtype=bool)
    for row, (episode, end) in enumerate(zip(episodes, ends, strict=True)):
        length = min(int(end) + 1, context) if lengths is None else int(lengths[row])
        source = slice(arrays.starts[episode] + end + 1 - length, arrays.starts[episode] + end + 1)
        target = slice(context - length, context) if padding_side == "left" else slice(0, length)
        items[row, target] = arrays.state_items[source]
        feedback[row, target] = arrays.state_feedback[source]
        item_mask[row, target] = arrays.state_mask[source]
        returns[row, target] = arrays.returns_to_go[source]
        actions[row, target] = arrays.actions[source]
        timesteps[row, target] = arrays.timesteps[source]
        step_mask[row, target] = True
    flags = np.ones(b, dtype=bool) if conditioned is None else np.asarray(conditioned, dtype=bool)
    return TrajectoryBatch(
        *(torch.as_tensor(a) for a in (items, feedback, item_mask, returns, actions, timesteps, step_mask, flags))
    )
