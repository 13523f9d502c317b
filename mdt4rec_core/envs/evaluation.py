"""The evaluation loop: episodes in a batched environment, one policy call per step for all live episodes.

Metrics per episode: R_cumu (sum of rewards) and Length (steps); R_avg = mean R_cumu / mean Length (a ratio of
means, not a mean of ratios). Intervals: 95 % normal intervals over all episodes, and over seeds (Student t on the
per-seed means) when there are several seeds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from mdt4rec_core.config import Mode
from mdt4rec_core.envs.policies import Policy
from mdt4rec_core.envs.quit_rules import QuitRule
from mdt4rec_core.envs.simulator import BatchedEnv

_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@dataclass(frozen=True)
class EpisodeLog:
    """Per episode, in order of (seed, episode): the seed, user, initial item, return and length."""

    seeds: np.ndarray
    users: np.ndarray
    initial_items: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray
    actions: list[np.ndarray]


def run_episodes(
    rewards: np.ndarray,
    quit_rule: QuitRule,
    mode: Mode,
    policy: Policy,
    start_users: np.ndarray,
    episodes: int,
    seed: int,
) -> EpisodeLog:
    """``episodes`` episodes, each starting from a user drawn from ``start_users`` and a random initial item."""
    rng = np.random.default_rng(seed)
    users = rng.choice(start_users, size=episodes)
    initial_items = rng.integers(rewards.shape[1], size=episodes)
    env = BatchedEnv(rewards, quit_rule, mode)
    observation = env.reset(users, initial_items)
    while env.live.any():
        env.step(policy.act(observation, rng))
        observation = env.observe()
    return EpisodeLog(
        seeds=np.full(episodes, seed),
        users=users,
        initial_items=initial_items,
        returns=env.returns.copy(),
        lengths=env.steps.copy(),
        actions=[env.history[k, : env.steps[k]].copy() for k in range(episodes)],
    )


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of a 95 % normal interval."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(1.959964 * values.std(ddof=1) / math.sqrt(len(values)))


def seed_ci95(per_seed: list[float]) -> float:
    """Half-width of a 95 % Student-t interval over per-seed means (nan with one seed)."""
    if len(per_seed) < 2:
        return float("nan")
    t = _T_975.get(len(per_seed) - 1, 1.96)
    return float(t * np.std(per_seed, ddof=1) / math.sqrt(len(per_seed)))


def evaluate_in_simulator(
    rewards: np.ndarray,
    quit_rule: QuitRule,
    mode: Mode,
    policy: Policy,
    start_users: np.ndarray,
    episodes: int,
    seeds: list[int],
) -> dict:
    """Run ``episodes`` episodes per seed and summarise them (JSON-ready)."""
    started = time.perf_counter()
    logs = [run_episodes(rewards, quit_rule, mode, policy, start_users, episodes, seed) for seed in seeds]
    return summarise_episodes(logs, mode, time.perf_counter() - started)


def summarise_episodes(logs: list[EpisodeLog], mode: str, seconds: float) -> dict:
    """R_cumu, Length and R_avg with their intervals over the episodes of ``logs`` (one log per seed)."""
    returns = np.concatenate([log.returns for log in logs])
    lengths = np.concatenate([log.lengths for log in logs])
    r_cumu, r_cumu_ci = mean_ci95(returns)
    length, length_ci = mean_ci95(lengths)
    return {
        "mode": mode,
        "R_cumu": r_cumu,
        "R_cumu_ci95": r_cumu_ci,
        "R_cumu_seed_ci95": seed_ci95([float(log.returns.mean()) for log in logs]),
        "Length": length,
        "Length_ci95": length_ci,
        "R_avg": r_cumu / length if length else float("nan"),
        "R_avg_seed_ci95": seed_ci95([float(log.returns.mean() / log.lengths.mean()) for log in logs]),
        "episodes": int(len(returns)),
        "seeds": [int(log.seeds[0]) for log in logs],
        "seconds": seconds,
        "episodes_per_second": len(returns) / seconds if seconds else float("inf"),
    }
