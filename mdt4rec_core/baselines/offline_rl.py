"""Offline Q-learning baselines with d3rlpy 2.8.1: DiscreteCQL and DiscreteBCQ, one action per catalogue item.

State (EasyRL4Rec's average state tracker): the mean of the item vectors of the episode's last <= 3 items, followed
by the previous reward (0 at step 0): a (d + 1,) float32 vector. The episode's initial item counts as its first item,
so at step 0 the mean is the initial item's vector. In the simulator the initial item is given; in the logs it is the
user's action just before the episode (a user's first episode has none: its step-0 state is the zero vector and
reward 0). Rewards are the logs' normalised ``reward`` column (in [0, 1]), so the simulator's raw rewards are
normalised with the training data's feedback range before they enter a state.

Training: ``algo.update`` on transition mini-batches drawn by d3rlpy's replay buffer (``MDPDataset``, episodes split
by ``done``). d3rlpy draws mini-batches from numpy's global RNG and initialises from torch's global RNG; training
seeds them with ``d3rlpy.seed(config.seed)`` and restores the global RNG states afterwards, so a run is reproducible
and leaves other code's randomness alone (``d3rlpy.seed`` also sets ``torch.backends.cudnn.deterministic``).

Saving: ``config.json`` (this module's config, the observation size and action count), ``item_vectors.safetensors``
and ``model.d3``, written by d3rlpy's own ``save_model``: ``torch.save`` of the networks' and optimiser's state dicts
(a pickle-based zip). ``load_model`` reads it back with ``torch.load``, which unpickles with ``weights_only=True`` by
default in this torch: only tensors and plain containers, no arbitrary objects. Loading rebuilds the algorithm from
the config with ``create_impl`` before loading the weights.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import polars as pl
import torch
from safetensors.numpy import load_file, save_file

from mdt4rec_core.data.schema import USER_ID
from mdt4rec_core.data.trajectories import normalised_rewards
from mdt4rec_core.envs.simulator import Observation
from mdt4rec_core.errors import InputError

if TYPE_CHECKING:  # d3rlpy is imported where it is used: importing it configures structlog and imports gym
    from d3rlpy.algos import QLearningAlgoBase
    from d3rlpy.dataset import MDPDataset

RECENT = 3
"""Items averaged into the state."""
WEIGHTS, VECTORS, CONFIG = "model.d3", "item_vectors.safetensors", "config.json"


@dataclass(frozen=True)
class OfflineRLConfig:
    algorithm: Literal["cql", "bcq"]
    steps: int = 10_000  # gradient steps
    batch_size: int = 256  # transitions per step
    learning_rate: float = 3e-4  # Adam
    gamma: float = 0.9
    hidden_units: tuple[int, ...] = (256, 256)  # MLP encoder of the Q-network (and BCQ's imitator, which shares it)
    target_update_interval: int = 1000  # steps between target-network copies
    alpha: float = 1.0  # CQL: weight of the conservative term
    action_flexibility: float = 0.3  # BCQ: keep actions whose imitation probability is >= this times the best's
    seed: int = 0

    def __post_init__(self):
        if self.algorithm not in ("cql", "bcq"):
            raise ValueError(f"unknown algorithm {self.algorithm!r} (known: cql, bcq)")
        if not 0 < self.action_flexibility < 1:
            raise ValueError(f"action_flexibility must lie in (0, 1), got {self.action_flexibility}")


def state_vectors(recent: np.ndarray, previous_rewards: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """(N, d + 1) float32 states from ``recent`` (N, 3) item indices (-1 where there is none) and
    ``previous_rewards`` (N,) normalised rewards."""
    valid = recent >= 0
    summed = (item_vectors[np.where(valid, recent, 0)] * valid[:, :, None]).sum(axis=1)
    mean = summed / np.maximum(valid.sum(axis=1), 1)[:, None]
    return np.concatenate([mean, previous_rewards[:, None]], axis=1).astype(np.float32)


def logged_states(steps: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The frame sorted by (user, episode, step), the (N, 3) recent items of each step (most recent first, -1 where
    there is none) and the (N,) previous rewards, from ``state_items``/``state_feedback`` and, while an episode has
    fewer than 3 items, its initial item (the user's previous action)."""
    ordered = steps.sort(USER_ID, "episode", "step")
    before = ordered.with_columns(pl.col("action").shift(1).over(USER_ID).alias("_before"))
    frame = before.select(
        *[pl.col("state_items").list.get(-k, null_on_oob=True).alias(f"recent{k}") for k in range(1, RECENT + 1)],
        pl.col("state_items").list.len().alias("held"),
        pl.col("_before").first().over(USER_ID, "episode").alias("initial"),
        pl.col("state_feedback").list.last().fill_null(0.0).alias("previous_reward"),
    )
    recent = frame.select([f"recent{k}" for k in range(1, RECENT + 1)]).fill_null(-1).to_numpy().astype(np.int64)
    held = frame["held"].to_numpy()
    if (held < np.minimum(ordered["step"].to_numpy(), RECENT)).any():
        raise InputError(
            f"state_items hold fewer than the {RECENT} items a state needs: rebuild with state_length >= 3"
        )
    initial = frame["initial"].fill_null(-1).to_numpy().astype(np.int64)
    short = np.flatnonzero(held < RECENT)
    recent[short, held[short]] = initial[short]
    return ordered, recent, frame["previous_reward"].to_numpy().astype(np.float32)


def observation_states(
    observation: Observation, item_vectors: np.ndarray, feedback_min: float, feedback_max: float
) -> np.ndarray:
    """(B, d + 1) states of the live episodes; raw rewards are normalised by the training data's feedback range."""
    steps = observation.steps.astype(np.int64)
    sequence = np.concatenate([observation.initial_items[:, None], observation.history], axis=1)  # (B, T + 1)
    position = steps[:, None] - np.arange(RECENT)  # positions in ``sequence`` of the last 3 items, newest first
    recent = np.take_along_axis(sequence, np.clip(position, 0, None), axis=1)
    recent[position < 0] = -1
    last = observation.history_rewards[np.arange(len(steps)), np.maximum(steps - 1, 0)]
    previous = np.where(steps > 0, normalised_rewards(last.astype(np.float64), feedback_min, feedback_max), 0.0)
    return state_vectors(recent, previous, item_vectors)


def offline_dataset(steps: pl.DataFrame, item_vectors: np.ndarray) -> MDPDataset:
    """A d3rlpy ``MDPDataset`` of the steps (TRAJECTORY_SCHEMA) with one discrete action per item of
    ``item_vectors`` (I, d): terminals from ``done``, plus a timeout where an episode's rows stop without one."""
    from d3rlpy import ActionSpace
    from d3rlpy.dataset import MDPDataset

    if steps.height == 0:
        raise InputError("no logged steps to learn from")
    ordered, recent, previous_rewards = logged_states(steps)
    actions = ordered["action"].to_numpy().astype(np.int64)
    if actions.min() < 0 or actions.max() >= len(item_vectors):
        raise InputError(f"logged actions must be catalogue indices in [0, {len(item_vectors)})")
    done = ordered["done"].to_numpy()
    changes = (pl.col(USER_ID) != pl.col(USER_ID).shift(-1)) | (pl.col("episode") != pl.col("episode").shift(-1))
    last_rows = ordered.select(changes.fill_null(True)).to_series().to_numpy()  # an episode's last row
    return MDPDataset(
        observations=state_vectors(recent, previous_rewards, item_vectors),
        actions=actions,
        rewards=ordered["reward"].to_numpy().astype(np.float32),
        terminals=done.astype(np.float32),
        timeouts=(last_rows & ~done).astype(np.float32),
        action_space=ActionSpace.DISCRETE,
        action_size=len(item_vectors),
    )


def create_algorithm(config: OfflineRLConfig, device: str) -> QLearningAlgoBase:
    """The (untrained, unbuilt) d3rlpy algorithm of ``config``."""
    from d3rlpy.algos import DiscreteBCQConfig, DiscreteCQLConfig
    from d3rlpy.models.encoders import VectorEncoderFactory

    common = dict(
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        encoder_factory=VectorEncoderFactory(hidden_units=list(config.hidden_units)),
        target_update_interval=config.target_update_interval,
    )
    if config.algorithm == "cql":
        return DiscreteCQLConfig(**common, alpha=config.alpha).create(device=device)
    return DiscreteBCQConfig(**common, action_flexibility=config.action_flexibility).create(device=device)


def train_offline_rl(
    steps: pl.DataFrame, item_vectors: np.ndarray, config: OfflineRLConfig, device: str = "cpu:0"
) -> QLearningAlgoBase:
    """The d3rlpy algorithm trained for ``config.steps`` gradient steps on ``steps`` (TRAJECTORY_SCHEMA), with
    states built from ``item_vectors`` (I, d) float32; one action per catalogue index 0..I-1."""
    import d3rlpy

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            d3rlpy.seed(config.seed)
            dataset = offline_dataset(steps, item_vectors)  # building it draws from numpy's global RNG too
            algo = create_algorithm(config, device)
            algo.create_impl((item_vectors.shape[1] + 1,), len(item_vectors))
            for _ in range(config.steps):
                algo.update(dataset.sample_transition_batch(config.batch_size))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return algo


def save_offline_rl(folder: Path, algo: QLearningAlgoBase, config: OfflineRLConfig, item_vectors: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    algo.save_model(str(folder / WEIGHTS))
    save_file({"item_vectors": np.ascontiguousarray(item_vectors, dtype=np.float32)}, str(folder / VECTORS))
    saved = {"config": asdict(config), "observation_size": int(algo.observation_shape[0]), "actions": algo.action_size}
    (folder / CONFIG).write_text(json.dumps(saved, indent=2))


def load_offline_rl(folder: Path, device: str = "cpu:0") -> tuple[QLearningAlgoBase, np.ndarray, OfflineRLConfig]:
    """(algo, item_vectors (I, d), config) as saved by ``save_offline_rl``."""
    for name in (WEIGHTS, VECTORS, CONFIG):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: not an offline-RL folder ({name} missing)")
    saved = json.loads((folder / CONFIG).read_text())
    config = OfflineRLConfig(**{**saved["config"], "hidden_units": tuple(saved["config"]["hidden_units"])})
    algo = create_algorithm(config, device)
    algo.create_impl((saved["observation_size"],), saved["actions"])
    algo.load_model(str(folder / WEIGHTS))
    return algo, load_file(str(folder / VECTORS))["item_vectors"], config


class QPolicy:
    """Recommend the allowed item with the largest Q-value (the mean over the algorithm's critics).

    For DiscreteBCQ the candidates are first narrowed as d3rlpy's BCQ does: items whose imitation probability is at
    least ``action_flexibility`` times the most probable allowed item's. (d3rlpy's own ``predict`` cannot take a mask:
    the filter is redone here over the allowed items only; without a mask it picks the same items as ``predict``.)

    ``feedback_min``/``feedback_max``: the training data's raw feedback range, to normalise the simulator's rewards.
    """

    def __init__(self, algo: QLearningAlgoBase, item_vectors: np.ndarray, feedback_min: float, feedback_max: float):
        if algo.observation_shape != (item_vectors.shape[1] + 1,):
            raise ValueError(
                f"item vectors of size {item_vectors.shape[1]} do not make {algo.observation_shape} states"
            )
        self.algo, self.item_vectors = algo, np.asarray(item_vectors, dtype=np.float32)
        self.low, self.high = feedback_min, feedback_max
        self.flexibility = getattr(algo.config, "action_flexibility", None)  # only DiscreteBCQ has it

    @torch.no_grad()
    def scores(self, observation: Observation) -> torch.Tensor:
        """(B, I) float scores, -inf where an item is not allowed (or filtered out by BCQ)."""
        impl = self.algo.impl
        x = torch.as_tensor(observation_states(observation, self.item_vectors, self.low, self.high), device=impl.device)
        q = torch.stack([q_function(x).q_value for q_function in impl.q_function]).mean(dim=0).float().cpu()
        allowed = torch.ones_like(q, dtype=torch.bool)
        if observation.allowed is not None:
            allowed = torch.as_tensor(observation.allowed)
        if self.flexibility is not None:
            log_probs = torch.log_softmax(impl.modules.imitator(x).logits.float().cpu(), dim=1)
            best = log_probs.masked_fill(~allowed, -torch.inf).max(dim=1, keepdim=True).values
            allowed = allowed & (log_probs - best > np.log(self.flexibility))  # keeps the best: flexibility < 1
        return q.masked_fill(~allowed, -torch.inf)

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        return self.scores(observation).argmax(dim=1).numpy()
