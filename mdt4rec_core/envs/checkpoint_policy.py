"""A trained checkpoint as a simulator policy (the ``Policy`` protocol of ``policies``): each step, the episodes'
histories become search contexts (``inference.recommend.context_from_history``) and the stitched decision's first
item is recommended. Pass 1's keys and values are kept from step to step (``inference.incremental``). The chosen
history lengths are counted for the histogram users want."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from mdt4rec_core.config import SearchConfig
from mdt4rec_core.data.trajectories import normalised_rewards
from mdt4rec_core.envs.simulator import Observation
from mdt4rec_core.errors import InputError
from mdt4rec_core.inference.incremental import IncrementalSearch
from mdt4rec_core.inference.recommend import context_from_history
from mdt4rec_core.inference.search import Decision, EpisodeContext, search
from mdt4rec_core.model.checkpoint import checkpoint_search, load_checkpoint
from mdt4rec_core.model.placement import resolve_device, with_device


class CheckpointPolicy:
    """``environment_catalogue`` must list the same item ids in the same order as the checkpoint's; rewards seen in
    the simulator are normalised with the training data's feedback range; ``config``: the search settings (default:
    those of the run that trained the checkpoint); ``device`` overrides where they run."""

    def __init__(
        self,
        checkpoint: Path,
        environment_catalogue: pl.DataFrame,
        config: SearchConfig | None = None,
        device: str | None = None,
    ):
        self.model, catalogue, metadata = load_checkpoint(checkpoint)
        if catalogue["item_id"].to_list() != environment_catalogue["item_id"].to_list():
            raise InputError(
                f"{checkpoint}: the checkpoint's catalogue ({catalogue.height:,} items) differs from the "
                f"environment's ({environment_catalogue.height:,}); train on the same dataset snapshot"
            )
        self.low, self.high = metadata["feedback_min"], metadata["feedback_max"]
        self.config = with_device(config or checkpoint_search(checkpoint), device).model_copy(update={"top_k": 1})
        self.model.to(resolve_device(self.config.device))
        self.incremental = IncrementalSearch(self.model, self.config)
        self.chosen_lengths: Counter[int] = Counter()

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        contexts = []
        for row in range(len(observation.users)):
            steps = int(observation.steps[row])
            rewards = observation.history_rewards[row, :steps]
            rewards = normalised_rewards(rewards, self.low, self.high)
            context = context_from_history(
                observation.history[row, :steps],
                rewards.astype(np.float32),
                self.model.shape.items,
                self.model.shape.state_length,
                self.model.shape.max_return,
                exclude_seen=False,
                initial_item=int(observation.initial_items[row]) if observation.initial_items[row] >= 0 else None,
            )
            if observation.allowed is not None:
                context.forbidden = ~observation.allowed[row]
            contexts.append(context)
        decisions = self.decide(contexts, observation.episodes, int(rng.integers(2**31)))
        self.chosen_lengths.update(d.chosen_length for d in decisions)
        return np.array([int(d.items[0]) for d in decisions])

    def decide(self, contexts: list[EpisodeContext], episodes: np.ndarray | None, seed: int) -> list[Decision]:
        """The search's decisions; with the episodes' numbers (stable across steps), pass 1's work is reused."""
        if episodes is None:
            return search(self.model, contexts, self.config, seed=seed)
        return self.incremental.decide(contexts, episodes, seed=seed)
