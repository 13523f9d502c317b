"""Data-driven recommendation environments: a batched simulator stepping many users at once, and a gymnasium view
of one user.

A user starts an episode with an initial item (context only: it is not a recommendation). Each step the policy
recommends one item; the reward is ``rewards[user, item]`` (raw scale); the user leaves when the quit rule fires
(that step counts) or after ``max_steps`` steps. Modes (EasyRL4Rec):

- ``FB``: repeats allowed, quit rule active, at most 30 steps;
- ``NX_0``: items already recommended in the episode are masked, quit rule active, at most 30 steps;
- ``NX_10``: masked, quit rule off, exactly 10 steps.

In the masked modes an episode also ends once every item of the catalogue has been recommended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdt4rec_core.config import MODES, Mode
from mdt4rec_core.envs.quit_rules import NO_ITEM, QuitRule


@dataclass(frozen=True)
class ModeSpec:
    masks_repeats: bool
    quit_active: bool
    max_steps: int


MODE_SPECS: dict[str, ModeSpec] = {
    "FB": ModeSpec(masks_repeats=False, quit_active=True, max_steps=30),
    "NX_0": ModeSpec(masks_repeats=True, quit_active=True, max_steps=30),
    "NX_10": ModeSpec(masks_repeats=True, quit_active=False, max_steps=10),
}


@dataclass
class Observation:
    """What a policy sees for the B live episodes.

    ``users`` (B,) user indices; ``initial_items`` (B,); ``history`` (B, T) items recommended so far, oldest first,
    -1 padded on the right; ``history_rewards`` (B, T) their rewards; ``steps`` (B,) how many were recommended;
    ``allowed`` (B, I) bool, the items the mode allows now (None in FB: everything); ``episodes`` (B,) the live
    episodes' numbers, the same for an episode at every step (None: not tracked), so a policy may keep per-episode
    state between steps.
    """

    users: np.ndarray
    initial_items: np.ndarray
    history: np.ndarray
    history_rewards: np.ndarray
    steps: np.ndarray
    allowed: np.ndarray | None
    episodes: np.ndarray | None = None


class BatchedEnv:
    """B episodes stepped together with array operations.

    ``rewards``: (U, I) float32 ground-truth rewards. ``reset(users, initial_items)`` starts one episode per entry;
    ``step(actions)`` takes (B_live,) items for the live episodes, in the order of ``live``.
    """

    def __init__(self, rewards: np.ndarray, quit_rule: QuitRule, mode: Mode):
        if mode not in MODE_SPECS:
            raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        self.rewards = rewards
        self.quit_rule = quit_rule
        self.mode = mode
        self.spec = MODE_SPECS[mode]
        self.n_items = rewards.shape[1]

    def reset(self, users: np.ndarray, initial_items: np.ndarray) -> Observation:
        b = len(users)
        self.users = np.asarray(users, dtype=np.int64)
        self.initial_items = np.asarray(initial_items, dtype=np.int64)
        self.history = np.full((b, self.spec.max_steps), NO_ITEM, dtype=np.int64)
        self.history_rewards = np.zeros((b, self.spec.max_steps), dtype=np.float32)
        self.steps = np.zeros(b, dtype=np.int64)
        self.returns = np.zeros(b, dtype=np.float64)
        self.live = np.ones(b, dtype=bool)
        self.recommended = np.zeros((b, self.n_items), dtype=bool) if self.spec.masks_repeats else None
        return self.observe()

    def observe(self) -> Observation:
        """The observation of the live episodes (in index order of ``np.flatnonzero(self.live)``)."""
        live = self.live
        return Observation(
            users=self.users[live],
            initial_items=self.initial_items[live],
            history=self.history[live],
            history_rewards=self.history_rewards[live],
            steps=self.steps[live],
            allowed=None if self.recommended is None else ~self.recommended[live],
            episodes=np.flatnonzero(live),
        )

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Recommend ``actions`` (B_live,) to the live episodes; returns their (rewards, done) and advances."""
        index = np.flatnonzero(self.live)
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != index.shape:
            raise ValueError(f"expected {len(index)} actions (one per live episode), got shape {actions.shape}")
        if ((actions < 0) | (actions >= self.n_items)).any():
            raise ValueError(f"actions must be item indices in [0, {self.n_items})")
        if self.recommended is not None and self.recommended[index, actions].any():
            raise ValueError(f"mode {self.mode} forbids recommending an item twice in an episode")
        rewards = self.rewards[self.users[index], actions]
        steps = self.steps[index]
        done = steps + 1 >= self.spec.max_steps
        if self.spec.quit_active:
            recent_first = np.take_along_axis(
                self.history[index], np.clip(steps[:, None] - 1 - np.arange(self.quit_rule.window), 0, None), axis=1
            )
            recent_first[np.arange(self.quit_rule.window)[None, :] >= steps[:, None]] = NO_ITEM
            done |= self.quit_rule.quits(recent_first, actions)
        self.history[index, steps] = actions
        self.history_rewards[index, steps] = rewards
        if self.recommended is not None:
            self.recommended[index, actions] = True
            done |= self.recommended[index].all(axis=1)  # nothing left to recommend
        self.steps[index] += 1
        self.returns[index] += rewards
        self.live[index[done]] = False
        return rewards, done
