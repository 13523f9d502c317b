"""Recommendation for one user from a checkpoint: the episode so far -> stitched decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdt4rec_core.config import SearchConfig
from mdt4rec_core.data.trajectories import normalised_rewards
from mdt4rec_core.errors import InputError
from mdt4rec_core.inference.search import EpisodeContext, search
from mdt4rec_core.model.checkpoint import checkpoint_search, load_checkpoint


def context_from_history(
    indices: np.ndarray,
    rewards: np.ndarray,
    items: int,
    state_length: int,
    initial_return: float,
    exclude_seen: bool,
    initial_item: int | None = None,
) -> EpisodeContext:
    """The episode so far (items acted on, oldest first, with their rewards in [0, 1]) as a search context: state k
    holds the last ``state_length`` of the episode's items before step k, where the episode's items are its
    ``initial_item`` (when given; its feedback is 0, as in training) followed by the actions; the running
    return-to-go starts at ``initial_return``."""
    t = len(indices)
    offset = int(initial_item is not None)
    sequence = np.concatenate([[initial_item] if offset else [], indices]).astype(np.int64)
    feedback = np.concatenate([[0.0] if offset else [], rewards]).astype(np.float32)
    state_items = np.full((t + 1, state_length), items, dtype=np.int64)
    state_feedback = np.zeros((t + 1, state_length), dtype=np.float32)
    state_mask = np.zeros((t + 1, state_length), dtype=bool)
    for k in range(t + 1):
        recent = slice(max(0, k + offset - state_length), k + offset)
        width = recent.stop - recent.start
        state_items[k, :width], state_feedback[k, :width], state_mask[k, :width] = (
            sequence[recent],
            feedback[recent],
            True,
        )
    returns = (initial_return - np.concatenate([[0.0], np.cumsum(rewards)])).astype(np.float32)
    forbidden = np.zeros(items, dtype=bool)
    if exclude_seen:
        forbidden[indices] = True
    return EpisodeContext(state_items, state_feedback, state_mask, returns, indices, forbidden)


def checked_feedback(values: list) -> np.ndarray:
    """Raw feedback values as float64, shape (len(values),); a null, non-numeric, NaN or infinite value is an
    InputError naming its position."""
    checked = np.empty(len(values), dtype=np.float64)
    for position, value in enumerate(values):
        if value is None:
            raise InputError(f"feedback[{position}] is null: give a finite number for every history item")
        try:
            checked[position] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"feedback[{position}] is not a number ({value!r})") from None
        if not np.isfinite(checked[position]):
            raise InputError(f"feedback[{position}] is {checked[position]}: feedback values must be finite numbers")
    return checked


class Recommender:
    """A checkpoint loaded once, answering recommendation requests (the command line and the MLflow model)."""

    def __init__(self, checkpoint: Path, config: SearchConfig | None = None):
        """``config``: the search settings (default: those of the run that trained the checkpoint)."""
        self.model, self.catalogue, metadata = load_checkpoint(checkpoint)
        self.index = dict(zip(self.catalogue["item_id"].to_list(), self.catalogue["index"].to_list(), strict=True))
        self.ids = self.catalogue["item_id"].to_numpy()
        self.low, self.high = metadata["feedback_min"], metadata["feedback_max"]
        self.config = config or checkpoint_search(checkpoint)

    def recommend(self, history: list[str], feedback: list[float] | None, k: int, exclude_seen: bool = True) -> dict:
        """Top-``k`` items for a user whose episode so far is ``history`` (item ids) with raw ``feedback``
        (default: the top of the training feedback range)."""
        if not history:
            raise InputError("the history is empty: give at least one item the user interacted with")
        if feedback is not None and len(feedback) != len(history):
            raise InputError(f"feedback has {len(feedback)} values for {len(history)} history items")
        raw = checked_feedback(feedback) if feedback is not None else np.full(len(history), float(self.high))
        if k < 1:
            raise InputError(f"k must be at least 1 (got {k})")
        unknown = [item for item in history if item not in self.index]
        if unknown:
            raise InputError(
                f"unknown item id {unknown[0]!r} (not in the checkpoint's catalogue of {len(self.index):,} items)"
            )
        rewards = normalised_rewards(raw, self.low, self.high)
        shape = self.model.shape
        context = context_from_history(
            np.array([self.index[i] for i in history]),
            rewards.astype(np.float32),
            shape.items,
            shape.state_length,
            shape.max_return,
            exclude_seen,
        )
        decision = search(self.model, [context], self.config.model_copy(update={"top_k": k}))[0]
        return {
            "items": self.ids[decision.items].tolist(),
            "chosen_history_length": decision.chosen_length,
            "max_return_estimates": dict(zip(decision.lengths, decision.max_returns.round(4).tolist(), strict=True)),
            "conditioned_return": float(decision.conditioned_returns[decision.lengths.index(decision.chosen_length)]),
        }


def recommend(
    checkpoint: Path,
    history: list[str],
    feedback: list[float] | None,
    k: int,
    config: SearchConfig | None = None,
    exclude_seen: bool = True,
) -> dict:
    """One request against ``checkpoint`` (see ``Recommender.recommend``)."""
    return Recommender(checkpoint, config).recommend(history, feedback, k, exclude_seen)
