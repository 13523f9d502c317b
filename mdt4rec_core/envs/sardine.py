"""SARDINE (PyPI ``sardine-rec``) behind the pipeline's interfaces: its environments in the evaluation loop, and its
epsilon-greedy oracle as a generator of deliberately sub-optimal logs for the interaction store.

SARDINE has no user ids: each episode draws a new user, so the k-th episode of a log is user ``sardine-<k>``. An
episode lasts the environment's horizon (100 steps); there is no quit rule, so the modes only decide masking
(``NX_0``) and length (``NX_10``: 10 steps).
"""

from __future__ import annotations

import datetime as dt
import time

import gymnasium as gym
import numpy as np
import polars as pl

from mdt4rec_core.config import Mode
from mdt4rec_core.data.store import Store
from mdt4rec_core.envs.evaluation import EpisodeLog, summarise_episodes
from mdt4rec_core.envs.policies import Policy
from mdt4rec_core.envs.simulator import MODE_SPECS, Observation
from mdt4rec_core.errors import InputError

PREFIX = "sardine:"
LOG_START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def make_env(env_id: str) -> gym.Env:
    import sardine  # noqa: F401 - registers the sardine/* environment ids

    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("sardine/"))
        raise InputError(f"unknown SARDINE environment {env_id!r} (known: {', '.join(known)})")
    return gym.make(env_id)


def items_of(env_id: str) -> int:
    return int(make_env(env_id).unwrapped.num_items)


def dataset_name(env_id: str) -> str:
    """The store dataset that holds logs generated in ``env_id``: ``sardine/SingleItem-Static-v0`` ->
    ``sardine-singleitem-static-v0``."""
    return "".join(c if c.isalnum() else "-" for c in env_id.lower()).replace("--", "-")


def item_counts(store: Store, env_id: str) -> np.ndarray:
    """(I,) interactions per item in the stored logs of ``env_id`` (what a popularity policy may learn)."""
    scan = store.scan_interactions(dataset_name(env_id))
    if scan is None:
        raise InputError(f"no logs of {env_id} in {store.uri}: generate them first with mdt4rec sardine-logs")
    items = scan.select(pl.col("item_id").cast(pl.Int64)).collect()["item_id"].to_numpy()
    return np.bincount(items, minlength=items_of(env_id))


def run_sardine_episodes(env_id: str, policy: Policy, mode: Mode, episodes: int, seed: int) -> EpisodeLog:
    """``episodes`` episodes stepped side by side; the policy is called once per step for all of them."""
    spec = MODE_SPECS[mode]
    envs = [make_env(env_id) for _ in range(episodes)]
    n_items = int(envs[0].unwrapped.num_items)
    horizon = int(envs[0].unwrapped.H)  # SARDINE's episodes run to their horizon: no quit rule
    if not spec.quit_active:
        horizon = min(horizon, spec.max_steps)  # NX_10
    rng = np.random.default_rng(seed)
    initial = np.array([int(env.reset(seed=seed * 1_000_003 + k)[0]["slate"][0]) for k, env in enumerate(envs)])
    history = np.full((episodes, horizon), -1, dtype=np.int64)
    history_rewards = np.zeros((episodes, horizon), dtype=np.float32)
    recommended = np.zeros((episodes, n_items), dtype=bool) if spec.masks_repeats else None
    for step in range(horizon):
        observation = Observation(
            users=np.arange(episodes),
            initial_items=initial,
            history=history,
            history_rewards=history_rewards,
            steps=np.full(episodes, step),
            allowed=None if recommended is None else ~recommended,
        )
        actions = policy.act(observation, rng)
        for k, env in enumerate(envs):
            _, reward, *_ = env.step(np.array([actions[k]]))
            history_rewards[k, step] = float(reward)
        history[:, step] = actions
        if recommended is not None:
            recommended[np.arange(episodes), actions] = True
    return EpisodeLog(
        seeds=np.full(episodes, seed),
        users=np.arange(episodes),
        initial_items=initial,
        returns=history_rewards.sum(axis=1).astype(np.float64),
        lengths=np.full(episodes, horizon),
        actions=list(history),
    )


class CatalogueMappedPolicy:
    """Runs a policy that speaks catalogue indices (a checkpoint trained on SARDINE logs) in a SARDINE environment,
    whose actions are SARDINE's integer item ids: initial items, histories and masks are translated in, actions out.
    Items never logged are not in the catalogue, so the policy never recommends them."""

    def __init__(self, inner: Policy, catalogue: pl.DataFrame, n_items: int):
        self.inner = inner
        self.to_env = catalogue["item_id"].cast(pl.Int64).to_numpy()  # catalogue index -> SARDINE id
        self.to_index = np.full(n_items, -1, dtype=np.int64)
        self.to_index[self.to_env] = np.arange(len(self.to_env))
        self.chosen_lengths = getattr(inner, "chosen_lengths", None)

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        history = np.where(observation.history >= 0, self.to_index[np.maximum(observation.history, 0)], -1)
        allowed = None if observation.allowed is None else observation.allowed[:, self.to_env]
        translated = Observation(
            observation.users,
            self.to_index[observation.initial_items],  # -1: an initial item never logged
            history,
            observation.history_rewards,
            observation.steps,
            allowed,
        )
        return self.to_env[self.inner.act(translated, rng)]


def evaluate_in_sardine(env_id: str, policy: Policy, mode: Mode, episodes: int, seeds: list[int]) -> dict:
    started = time.perf_counter()
    logs = [run_sardine_episodes(env_id, policy, mode, episodes, seed) for seed in seeds]
    return summarise_episodes(logs, mode, time.perf_counter() - started)


def land_log(store: Store, env_id: str, users: int, epsilon: float, seed: int) -> str:
    """Generate a log (``generate_log``) and write it as one Parquet file in the store's landing folder for the
    dataset ``dataset_name(env_id)``; returns that folder (a local path or URI) for ingestion."""
    log = generate_log(env_id, users, epsilon, seed)
    folder = f"landing/{dataset_name(env_id)}"
    store.write_parquet(log, f"{folder}/eps{epsilon:g}-users{users}-seed{seed}.parquet")
    return store.url(folder)


def generate_log(env_id: str, users: int, epsilon: float, seed: int) -> pl.DataFrame:
    """A logged-interaction table (user_id, item_id, timestamp, feedback) from SARDINE's epsilon-greedy oracle.

    With probability ``epsilon`` the logging policy shows a uniformly random item, otherwise the myopic oracle's
    choice. SARDINE draws exploration items from the global NumPy generator, so it is seeded here too.
    """
    from sardine.policies import EpsilonGreedyOracle

    if not 0 <= epsilon <= 1:
        raise InputError(f"epsilon must lie in [0, 1], got {epsilon}")
    np.random.seed(seed)
    env = make_env(env_id)
    policy = EpsilonGreedyOracle(epsilon=epsilon, env=env, seed=seed)
    logs = env.unwrapped.generate_dataset(n_users=users, policy=policy, seed=seed)
    frames = []
    for user, log in logs.items():
        steps = len(log["reward"])
        frames.append(
            pl.DataFrame(
                {
                    "user_id": [f"sardine-{seed}-{user}"] * steps,
                    "item_id": [str(int(a)) for a in np.asarray(log["action"]).reshape(steps, -1)[:, 0]],
                    "timestamp": [LOG_START + dt.timedelta(hours=int(user), seconds=t) for t in range(steps)],
                    "feedback": np.asarray(log["reward"], dtype=np.float64),
                }
            )
        )
    return pl.concat(frames)
