"""Recommendations from a checkpoint: a user's episode so far -> search context -> stitched decision, many users
at once in batched searches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdt4rec_core.config import SearchConfig
from mdt4rec_core.data.trajectories import normalised_rewards
from mdt4rec_core.errors import InputError
from mdt4rec_core.inference.search import Decision, EpisodeContext, search
from mdt4rec_core.model.checkpoint import checkpoint_search, load_checkpoint
from mdt4rec_core.model.placement import resolve_device, with_device


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


CHUNK_USERS = 256
"""Users per batched search call: bounds the action logits held at once (users x candidates x items floats)."""


class Recommender:
    """A checkpoint loaded once, answering recommendation requests (the command line, the MLflow model and batch
    scoring): requests become search contexts (``context``), contexts become decisions in one batched search per
    ``CHUNK_USERS`` of them (``decide``), decisions become answers (``answer``)."""

    def __init__(self, checkpoint: Path, config: SearchConfig | None = None, device: str | None = None):
        """``config``: the search settings (default: those of the run that trained the checkpoint); ``device``
        overrides where they run (see ``model.placement``)."""
        self.model, self.catalogue, metadata = load_checkpoint(checkpoint)
        self.index = dict(zip(self.catalogue["item_id"].to_list(), self.catalogue["index"].to_list(), strict=True))
        self.ids = self.catalogue["item_id"].to_numpy()
        self.low, self.high = metadata["feedback_min"], metadata["feedback_max"]
        self.dataset = metadata["dataset"]  # the dataset it was trained on
        self.config = with_device(config or checkpoint_search(checkpoint), device)
        self.model.to(resolve_device(self.config.device))

    def context(self, history: list[str], feedback: list[float] | None, exclude_seen: bool = True) -> EpisodeContext:
        """The search context of a user whose episode so far is ``history`` (item ids, oldest first) with raw
        ``feedback`` (default: the top of the training feedback range); bad input is an InputError naming the
        field."""
        if not history:
            raise InputError("the history is empty: give at least one item the user interacted with")
        if feedback is not None and len(feedback) != len(history):
            raise InputError(f"feedback has {len(feedback)} values for {len(history)} history items")
        raw = checked_feedback(feedback) if feedback is not None else np.full(len(history), float(self.high))
        unknown = [item for item in history if item not in self.index]
        if unknown:
            raise InputError(
                f"unknown item id {unknown[0]!r} (not in the checkpoint's catalogue of {len(self.index):,} items)"
            )
        return self.indexed_context(np.array([self.index[i] for i in history]), raw, exclude_seen)

    def indexed_context(
        self, items: np.ndarray, raw_feedback: np.ndarray, exclude_seen: bool, initial_item: int | None = None
    ) -> EpisodeContext:
        """The search context of an episode given as catalogue indices ``items`` (t,) with their raw feedback (t,)
        on the training data's scale, after ``initial_item`` when given (see ``context_from_history``)."""
        shape = self.model.shape
        return context_from_history(
            items,
            normalised_rewards(raw_feedback, self.low, self.high).astype(np.float32),
            shape.items,
            shape.state_length,
            shape.max_return,
            exclude_seen,
            initial_item,
        )

    def decide(self, contexts: list[EpisodeContext], k: int) -> list[Decision]:
        """The top-``k`` decision of every context, in order: one batched search per ``CHUNK_USERS`` contexts. With
        ``max_return`` conditioning and ``argmax`` decoding (the defaults) a user's decision does not depend on the
        other users of its chunk; ``expert_sample`` and ``sample`` draw their random numbers per chunk."""
        if k < 1:
            raise InputError(f"k must be at least 1 (got {k})")
        config = self.config.model_copy(update={"top_k": k})
        return [
            decision
            for start in range(0, len(contexts), CHUNK_USERS)
            for decision in search(self.model, contexts[start : start + CHUNK_USERS], config)
        ]

    def answer(self, decision: Decision) -> dict:
        """A decision as the answer users see: item ids, the chosen history length, the estimates per length and
        the return-to-go the items were conditioned on."""
        return {
            "items": self.ids[decision.items].tolist(),
            "chosen_history_length": decision.chosen_length,
            "max_return_estimates": dict(zip(decision.lengths, decision.max_returns.round(4).tolist(), strict=True)),
            "conditioned_return": float(decision.conditioned_returns[decision.lengths.index(decision.chosen_length)]),
        }

    def recommend(self, history: list[str], feedback: list[float] | None, k: int, exclude_seen: bool = True) -> dict:
        """Top-``k`` items for one user (see ``context``)."""
        return self.answer(self.decide([self.context(history, feedback, exclude_seen)], k)[0])


def recommend(
    checkpoint: Path,
    history: list[str],
    feedback: list[float] | None,
    k: int,
    config: SearchConfig | None = None,
    exclude_seen: bool = True,
    device: str | None = None,
) -> dict:
    """One request against ``checkpoint`` (see ``Recommender.recommend``)."""
    return Recommender(checkpoint, config, device).recommend(history, feedback, k, exclude_seen)
