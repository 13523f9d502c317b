"""A gymnasium view of one simulated user, driven by the same batched simulator (batch of one)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mdt4rec_core.config import Mode
from mdt4rec_core.envs.quit_rules import QuitRule
from mdt4rec_core.envs.simulator import MODE_SPECS, BatchedEnv


class RecommendationEnv(gym.Env):
    """Observation: ``user`` (index), ``initial_item``, ``history`` (max_steps,) items recommended so far (-1 padded),
    ``history_rewards`` (max_steps,). Action: an item index. Reward: the ground-truth reward of the item.

    ``reset(seed=s)`` draws the user from ``start_users`` and the initial item uniformly, like the evaluation loop.
    """

    metadata = {"render_modes": []}

    def __init__(self, rewards: np.ndarray, quit_rule: QuitRule, mode: Mode, start_users: np.ndarray):
        self.simulator = BatchedEnv(rewards, quit_rule, mode)
        self.start_users = np.asarray(start_users)
        n_users, n_items = rewards.shape
        steps = MODE_SPECS[mode].max_steps
        self.action_space = spaces.Discrete(n_items)
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Discrete(n_users),
                "initial_item": spaces.Discrete(n_items),
                "history": spaces.Box(-1, n_items - 1, shape=(steps,), dtype=np.int64),
                "history_rewards": spaces.Box(-np.inf, np.inf, shape=(steps,), dtype=np.float32),
            }
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        user = self.np_random.choice(self.start_users)
        item = self.np_random.integers(self.action_space.n)
        self.simulator.reset(np.array([user]), np.array([item]))
        return self._observation(), {}

    def step(self, action: int):
        if not self.simulator.live[0]:
            raise RuntimeError("the episode is over: call reset()")
        rewards, done = self.simulator.step(np.array([action]))
        return self._observation(), float(rewards[0]), bool(done[0]), False, {}

    def action_mask(self) -> np.ndarray:
        """(I,) bool: the items the mode allows now."""
        if self.simulator.recommended is None:
            return np.ones(self.action_space.n, dtype=bool)
        return ~self.simulator.recommended[0]

    def _observation(self) -> dict[str, Any]:
        s = self.simulator
        return {
            "user": int(s.users[0]),
            "initial_item": int(s.initial_items[0]),
            "history": s.history[0].copy(),
            "history_rewards": s.history_rewards[0].copy(),
        }
