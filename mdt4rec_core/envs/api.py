"""Entry points used by the command line and the tasks: build an environment, evaluate a named policy in it."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from mdt4rec_core.config import MODES, PROTOCOLS, Mode, Protocol, load_dataset_config
from mdt4rec_core.data.store import Store
from mdt4rec_core.envs import sardine
from mdt4rec_core.envs.build import Environment, build_or_load
from mdt4rec_core.envs.evaluation import evaluate_in_simulator
from mdt4rec_core.envs.policies import Policy, PopularityPolicy, RandomPolicy
from mdt4rec_core.errors import InputError

POLICIES = ("random", "popularity")
CHECKPOINT = "checkpoint:"


def build_env(store_uri: str, dataset: str, protocol: Protocol) -> dict:
    """Build (or reuse) the environment of ``dataset``; its description, JSON-ready."""
    _check_protocol(protocol)
    started = time.perf_counter()
    environment, built = build_or_load(Store(store_uri), load_dataset_config(dataset), protocol)
    return {**asdict(environment.info), "built": built, "seconds": time.perf_counter() - started}


def make_policy(name: str, environment: Environment) -> Policy:
    """``random``, ``popularity`` or ``checkpoint:<folder>`` (a trained model with stitched inference)."""
    if name.startswith(CHECKPOINT):
        from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy

        return CheckpointPolicy(Path(name.removeprefix(CHECKPOINT)), environment.catalogue)
    if name == "random":
        return RandomPolicy(environment.info.items)
    if name == "popularity":
        return PopularityPolicy(environment.item_counts)
    raise InputError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")


def evaluate_policy(
    store_uri: str, dataset: str, policy: str, mode: Mode, episodes: int, seeds: int, protocol: Protocol
) -> dict:
    """``episodes`` episodes for each of the seeds 0..seeds-1 of ``policy`` in the dataset's environment."""
    _check_protocol(protocol)
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    if policy not in POLICIES and not policy.startswith(CHECKPOINT):
        raise InputError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)}, {CHECKPOINT}<folder>)")
    if episodes < 1 or seeds < 1:
        raise InputError("--episodes and --seeds must be at least 1")
    if dataset.startswith(sardine.PREFIX):
        return _evaluate_in_sardine(store_uri, dataset.removeprefix(sardine.PREFIX), policy, mode, episodes, seeds)
    environment, built = build_or_load(Store(store_uri), load_dataset_config(dataset), protocol)
    chosen = make_policy(policy, environment)
    summary = evaluate_in_simulator(
        environment.rewards,
        environment.quit_rule,
        mode,
        chosen,
        environment.start_users,
        episodes,
        list(range(seeds)),
    )
    _add_length_histogram(summary, chosen)
    info = environment.info
    return {
        "env": dataset,
        "policy": policy,
        "protocol": protocol,
        "environment_version": info.version,
        "environment_built": built,
        "quit_rule": info.quit_rule,
        **summary,
    }


def _evaluate_in_sardine(store_uri: str, env_id: str, policy: str, mode: Mode, episodes: int, seeds: int) -> dict:
    chosen: Policy
    if policy.startswith(CHECKPOINT):
        chosen = _sardine_checkpoint_policy(Store(store_uri), env_id, Path(policy.removeprefix(CHECKPOINT)))
    elif policy == "random":
        chosen = RandomPolicy(sardine.items_of(env_id))
    else:
        chosen = PopularityPolicy(sardine.item_counts(Store(store_uri), env_id))
    summary = sardine.evaluate_in_sardine(env_id, chosen, mode, episodes, list(range(seeds)))
    _add_length_histogram(summary, chosen)
    return {"env": sardine.PREFIX + env_id, "policy": policy, "protocol": "sardine", **summary}


def _sardine_checkpoint_policy(store: Store, env_id: str, checkpoint: Path) -> Policy:
    """A checkpoint trained on the stored logs of ``env_id``, speaking SARDINE's item ids."""
    from mdt4rec_core.data.trajectories import load_trajectories
    from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy

    trajectories = load_trajectories(store, sardine.dataset_name(env_id))
    if trajectories is None:
        raise InputError(f"no trajectories of {env_id} logs in {store.uri}: run mdt4rec sardine-logs, then train")
    inner = CheckpointPolicy(checkpoint, trajectories.catalogue)
    return sardine.CatalogueMappedPolicy(inner, trajectories.catalogue, sardine.items_of(env_id))


def _add_length_histogram(summary: dict, policy: Policy) -> None:
    """Model policies count the history length their search chose at each decision: report the histogram."""
    lengths = getattr(policy, "chosen_lengths", None)
    if lengths is not None:
        summary["chosen_history_lengths"] = {int(k): v for k, v in sorted(lengths.items())}


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
