"""Trajectory building: stored interactions -> offline episodes of (state, action, reward, return-to-go) steps.

The result is versioned by a hash of its inputs (the dataset's ingested files and the build configuration) and
stored under ``trajectories/dataset=<name>/version=<hash>/`` (``steps/part-*.parquet``, ``catalogue.parquet``,
``item_factors.parquet``, ``build.json``); an unchanged version is reused, never rebuilt. Large logs are built in
buckets of users, so memory stays bounded by a bucket.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from mdt4rec_core.config import TrajectoryConfig, check_dataset_name
from mdt4rec_core.data.catalogue import held_out, item_catalogue
from mdt4rec_core.data.episodes import EpisodeRule, SessionRule, position_since, user_starts
from mdt4rec_core.data.item_factors import factorise_items
from mdt4rec_core.data.schema import FEEDBACK, ITEM_ID, TIMESTAMP, TRAJECTORY_SCHEMA, USER_ID
from mdt4rec_core.data.store import Store
from mdt4rec_core.errors import InputError

TRAJECTORY_BUILDER_VERSION = 2
"""Bumped whenever the builder's output changes for the same inputs."""


@dataclass(frozen=True)
class TrajectoryStats:
    version: str
    users: int
    items: int
    episodes: int
    steps: int
    feedback_min: float
    feedback_max: float
    buckets: int = 1


@dataclass(frozen=True)
class TrajectorySet:
    """``steps`` follows TRAJECTORY_SCHEMA; ``catalogue`` maps ``item_id`` to its ``index`` (0..items-1);
    ``item_factors`` (items, config.item_factors) float32: item vectors factorised from the steps' logged feedback."""

    steps: pl.DataFrame
    catalogue: pl.DataFrame
    stats: TrajectoryStats
    item_factors: np.ndarray


@dataclass(frozen=True)
class TrajectoryPlan:
    """What a build of the stored interactions of ``dataset`` needs before any step is made.

    The catalogue and the feedback range are global, so that steps built bucket by bucket (users split by a hash of
    their id into ``buckets`` groups of about ``max_rows_per_bucket`` events) are the steps of one build.
    """

    dataset: str
    version: str
    config: TrajectoryConfig
    rule: EpisodeRule
    catalogue: pl.DataFrame
    feedback_min: float
    feedback_max: float
    buckets: int

    @property
    def folder(self) -> str:
        return trajectory_dir(self.dataset, self.version)


def trailing_windows(values: pl.Series, lengths: np.ndarray, block_rows: int = 1 << 20) -> pl.Series:
    """List per row i: ``values[i - lengths[i] : i]`` (the ``lengths[i]`` values before row i, oldest first).

    Built from flat offsets, ``block_rows`` rows at a time so that index arrays stay small; ``lengths[i] <= i``.
    """
    source = values.to_numpy()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    pieces = []
    for start in range(0, len(lengths), block_rows):
        block = lengths[start : start + block_rows].astype(np.int64)
        rows = np.arange(start, start + len(block), dtype=np.int64)
        first = np.repeat(rows - block, block)  # index of each window's oldest value, repeated per element
        block_offsets = np.cumsum(block) - block
        position = np.arange(int(block.sum()), dtype=np.int64) - np.repeat(block_offsets, block)
        pieces.append(source[first + position])
    flat = pa.array(np.concatenate(pieces) if pieces else source[:0])
    return pl.Series(values.name, pa.LargeListArray.from_arrays(pa.array(offsets), flat))


def episode_rule(config: TrajectoryConfig) -> EpisodeRule:
    """The session rule of ``config`` (the rule a stored dataset's build cuts by, a simulator's quit rule included,
    comes from ``envs.episodes.stored_episode_rule``)."""
    return SessionRule(max_steps=config.max_episode_steps, gap_seconds=config.session_gap_seconds)


def trajectories_in_memory(interactions: pl.DataFrame, config: TrajectoryConfig, rule: EpisodeRule) -> TrajectorySet:
    """All steps of ``interactions`` in memory, with the catalogue and feedback range taken from them (a stored
    dataset is built bucket by bucket instead: ``plan_trajectories``, ``build_bucket``)."""
    if interactions.height == 0:
        raise InputError("no interactions to build trajectories from")
    catalogue = item_catalogue(interactions[ITEM_ID])
    low, high = float(interactions[FEEDBACK].min()), float(interactions[FEEDBACK].max())
    steps = make_steps(interactions, config, rule, catalogue, low, high)
    factors = logged_item_factors(steps, catalogue.height, config.item_factors)
    return TrajectorySet(steps, catalogue, trajectory_stats([steps], "", catalogue.height, low, high), factors)


def logged_item_factors(steps: pl.DataFrame, items: int, dim: int) -> np.ndarray:
    """(items, dim) item vectors factorised from the logged feedback of ``steps`` (see ``item_factors``)."""
    return factorise_items(
        steps[USER_ID].to_numpy(), steps["action"].to_numpy(), steps[FEEDBACK].to_numpy(), items, dim
    )


def feedback_span(low: float, high: float) -> float | None:
    """The width of the feedback range rewards are normalised by, or None when the range is a point (every reward
    is then 1.0). A width below the smallest normal float counts as a point: dividing by it is not reliable (vectorised
    kernels flush such values to zero)."""
    span = high - low
    return span if span >= sys.float_info.min else None


def normalised_rewards(raw: np.ndarray, low: float, high: float) -> np.ndarray:
    """Raw feedback (any shape) as rewards in [0, 1] by the training data's range ``low``..``high``."""
    span = feedback_span(low, high)
    return np.clip((raw - low) / span, 0, 1) if span else np.ones_like(raw, dtype=np.float64)


def make_steps(
    interactions: pl.DataFrame,
    config: TrajectoryConfig,
    rule: EpisodeRule,
    catalogue: pl.DataFrame,
    feedback_min: float,
    feedback_max: float,
) -> pl.DataFrame:
    """Turn events (user_id, item_id, timestamp, feedback) into steps following TRAJECTORY_SCHEMA.

    Per user and in time order: the episode index from ``rule``; ``state_items``/``state_feedback`` = the last
    ``config.state_length`` items of the episode and their rewards, oldest first, where the episode's items are its
    initial item (the user's previous logged item, which ended the previous episode; none for the user's first
    episode) followed by its actions. The initial item's feedback is 0, as in a simulator, which reveals no reward
    for it;
    ``reward`` = feedback min-max normalised to [0, 1] by the given range (1.0 when the range is a point);
    ``return_to_go`` = sum of rewards from the step to the episode's end.
    """
    span = feedback_span(feedback_min, feedback_max)
    reward = ((pl.col(FEEDBACK) - feedback_min) / span) if span else pl.lit(1.0)
    events = (
        interactions.select(USER_ID, ITEM_ID, TIMESTAMP, FEEDBACK)
        .sort([USER_ID, TIMESTAMP, ITEM_ID])
        .join(catalogue, on=ITEM_ID, how="left", maintain_order="left")
        .with_columns(pl.col("index").alias("action"), reward.cast(pl.Float32).alias("reward"))
    )
    # Rows are sorted by user then time, so episodes are contiguous runs: everything below is a global scan.
    starts = rule.episode_starts(events) | events.select(user_starts()).to_series()
    events = events.with_columns(starts.alias("_start"))
    step = position_since(pl.col("_start"))
    episode = pl.col("_start").cast(pl.Int32).cum_sum()
    suffix = pl.col("reward").cast(pl.Float64).reverse().cum_sum().reverse()  # sum of rewards from row i onwards
    next_start_suffix = pl.when(pl.col("_start")).then(suffix).shift(-1).backward_fill().fill_null(0.0)
    events = events.with_columns(
        step.cast(pl.Int32).alias("step"),
        (episode - pl.when(user_starts()).then(episode).forward_fill()).alias("episode"),
        (suffix - next_start_suffix).alias("return_to_go"),
        pl.col("_start").shift(-1).fill_null(True).alias("done"),
    )
    has_initial = events["episode"].to_numpy() > 0
    state_lengths = np.minimum(events["step"].to_numpy() + has_initial, config.state_length)
    # A done row's action is seen in states only as the next episode's initial item, whose feedback is hidden.
    state_rewards = events.select(pl.when(pl.col("done")).then(0.0).otherwise(pl.col("reward")).cast(pl.Float32))
    return (
        events.with_columns(
            trailing_windows(events["action"], state_lengths).alias("state_items"),
            trailing_windows(state_rewards.to_series(), state_lengths).alias("state_feedback"),
        )
        .select(list(TRAJECTORY_SCHEMA))
        .cast(TRAJECTORY_SCHEMA)
    )


def trajectory_stats(parts: list[pl.DataFrame], version: str, items: int, low: float, high: float) -> TrajectoryStats:
    """Stats of a build from its bucket parts (users never span buckets)."""
    return TrajectoryStats(
        version=version,
        users=sum(p[USER_ID].n_unique() for p in parts),
        items=items,
        episodes=sum(int(p["done"].sum()) for p in parts),
        steps=sum(p.height for p in parts),
        feedback_min=low,
        feedback_max=high,
        buckets=len(parts),
    )


def trajectory_version(store: Store, dataset: str, config: TrajectoryConfig, rule: EpisodeRule) -> str:
    """Hash of the dataset snapshot (the ingested interaction files) and the build configuration."""
    snapshot = sorted(sha for sha, e in store.manifest(dataset).items() if e.kind == "interactions")
    payload = {
        "snapshot": snapshot,
        # The rule's fingerprint names the environment whose quit rule cuts, so which protocol's rule it is
        # stays out of the hash (sets built before the setting existed keep their version).
        "config": config.model_dump(exclude={"quit_rule_protocol"}),
        "rule": rule.fingerprint(),
        "builder": TRAJECTORY_BUILDER_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def trajectory_dir(dataset: str, version: str) -> str:
    return f"trajectories/dataset={dataset}/version={version}"


def plan_trajectories(
    store: Store, dataset: str, config: TrajectoryConfig, rule: EpisodeRule, max_rows_per_bucket: int = 4_000_000
) -> TrajectoryPlan | None:
    """The build plan for the store's current snapshot of ``dataset`` with episodes cut by ``rule`` (None while
    nothing is stored).

    The catalogue and feedback range cover every stored event; under the strict protocol the steps leave out the
    users it holds out for evaluation.
    """
    scan = store.scan_interactions(dataset)
    if scan is None:
        return None
    rows, low, high = (
        scan.select(pl.len().alias("rows"), pl.col(FEEDBACK).min().alias("low"), pl.col(FEEDBACK).max().alias("high"))
        .collect()
        .row(0)
    )
    catalogue = item_catalogue(scan.select(pl.col(ITEM_ID).unique()).collect()[ITEM_ID])
    return TrajectoryPlan(
        dataset=dataset,
        version=trajectory_version(store, dataset, config, rule),
        config=config,
        rule=rule,
        catalogue=catalogue,
        feedback_min=float(low),
        feedback_max=float(high),
        buckets=max(1, -(-rows // max_rows_per_bucket)),
    )


def build_bucket(store: Store, plan: TrajectoryPlan, bucket: int) -> pl.DataFrame:
    """Steps of the users whose id hashes into ``bucket``."""
    scan = store.scan_interactions(plan.dataset)
    assert scan is not None
    events = scan.select(USER_ID, ITEM_ID, TIMESTAMP, FEEDBACK)
    if plan.config.protocol == "strict":
        events = events.filter(~held_out(pl.col(USER_ID)))
    if plan.buckets > 1:
        events = events.filter(pl.col(USER_ID).hash(seed=0) % plan.buckets == bucket)
    return make_steps(events.collect(), plan.config, plan.rule, plan.catalogue, plan.feedback_min, plan.feedback_max)


def save_bucket(store: Store, plan: TrajectoryPlan, bucket: int, steps: pl.DataFrame) -> None:
    store.write_parquet(steps, f"{plan.folder}/steps/part-{bucket:05d}.parquet")


def finish_build(store: Store, plan: TrajectoryPlan, stats: TrajectoryStats, make_current: bool = True) -> None:
    """Write the catalogue and the item factors of the saved steps, then build.json (a version without build.json
    is incomplete), then point CURRENT at it (unless ``make_current`` is false: a set built for a study)."""
    store.write_parquet(plan.catalogue, f"{plan.folder}/catalogue.parquet")
    logged = pl.concat(
        [
            store.read_parquet(part, columns=[USER_ID, "action", FEEDBACK])
            for part in store.files(f"{plan.folder}/steps", ".parquet")
        ]
    )
    factors = logged_item_factors(logged, plan.catalogue.height, plan.config.item_factors)
    store.write_parquet(pl.DataFrame({"vector": factors}), f"{plan.folder}/item_factors.parquet")
    store.write_json(asdict(stats), f"{plan.folder}/build.json")
    if make_current:
        set_current(store, plan.dataset, plan.version)


def set_current(store: Store, dataset: str, version: str) -> None:
    """Point ``CURRENT.json`` (the set the pipeline trains on) at the complete stored set ``version``."""
    if current_version(store, dataset) != version:
        store.write_json({"version": version}, f"trajectories/dataset={dataset}/CURRENT.json")


def stored_stats(store: Store, dataset: str, version: str | None = None) -> TrajectoryStats | None:
    """Stats of the complete stored set ``version`` (default: the current one), or None when there is none."""
    check_dataset_name(dataset)
    version = version or current_version(store, dataset)
    if version is None:
        return None
    relative = f"{trajectory_dir(dataset, version)}/build.json"
    stats = store.read_json(relative)
    if stats is None:
        return None
    with store.reading(relative):
        return TrajectoryStats(**stats)


def current_version(store: Store, dataset: str) -> str | None:
    """The version ``CURRENT.json`` points at, or None before the first build."""
    relative = f"trajectories/dataset={dataset}/CURRENT.json"
    current = store.read_json(relative)
    if current is None:
        return None
    with store.reading(relative):
        if not re.fullmatch(r"[0-9a-f]{16}", str(current["version"])):
            raise ValueError(f"not a trajectory version: {current['version']!r}")
    return current["version"]


def load_trajectories(store: Store, dataset: str, version: str | None = None) -> TrajectorySet | None:
    """The complete stored set ``version`` (default: the current one) read into memory, or None; a stored file
    that cannot be read is a StoreError naming it."""
    stats = stored_stats(store, dataset, version)
    if stats is None:
        return None
    folder = trajectory_dir(dataset, stats.version)
    steps = pl.concat([store.read_parquet(p) for p in store.files(f"{folder}/steps", ".parquet")])
    catalogue = store.read_parquet(f"{folder}/catalogue.parquet")
    factors_file = f"{folder}/item_factors.parquet"
    if not store.exists(factors_file):
        raise InputError(
            f"{store.url(folder)} was built by an earlier version (no item factors): run mdt4rec ingest to rebuild it"
        )
    factors = store.read_parquet(factors_file)["vector"]
    width = factors.dtype.size if isinstance(factors.dtype, pl.Array) else 0
    with store.reading(factors_file):
        item_factors = factors.to_numpy().astype(np.float32).reshape(catalogue.height, width)
    return TrajectorySet(steps, catalogue, stats, item_factors)
