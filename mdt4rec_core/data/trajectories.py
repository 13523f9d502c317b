"""Trajectory building: stored interactions -> offline episodes of (state, action, reward, return-to-go) steps.

The result is versioned by a hash of its inputs (the dataset's ingested files and the build configuration) and
stored under ``trajectories/dataset=<name>/version=<hash>/``; an unchanged version is reused, never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from mdt4rec_core.config import TrajectoryConfig
from mdt4rec_core.data.episodes import EpisodeRule, SessionRule, position_since, user_starts
from mdt4rec_core.data.schema import FEEDBACK, ITEM_ID, TIMESTAMP, TRAJECTORY_SCHEMA, USER_ID
from mdt4rec_core.data.store import Store
from mdt4rec_core.errors import InputError

BUILDER_VERSION = 1
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


@dataclass(frozen=True)
class TrajectorySet:
    """``steps`` follows TRAJECTORY_SCHEMA; ``catalogue`` maps ``item_id`` to its ``index`` (0..items-1)."""

    steps: pl.DataFrame
    catalogue: pl.DataFrame
    stats: TrajectoryStats


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
    return SessionRule(max_steps=config.max_episode_steps, gap_seconds=config.session_gap_seconds)


def build_trajectories(
    interactions: pl.DataFrame, config: TrajectoryConfig, rule: EpisodeRule, version: str = ""
) -> TrajectorySet:
    """Turn events (user_id, item_id, timestamp, feedback) into steps.

    Per user and in time order: the episode index from ``rule``; ``state_items``/``state_feedback`` = the last
    ``config.state_length`` actions of the same episode and their rewards (oldest first, empty at step 0);
    ``reward`` = feedback min-max normalised to [0, 1] over the whole set (1.0 when all feedback is equal);
    ``return_to_go`` = sum of rewards from the step to the episode's end.
    """
    if interactions.height == 0:
        raise InputError("no interactions to build trajectories from")
    catalogue = (
        interactions.select(pl.col(ITEM_ID).unique().sort()).with_row_index("index").select(ITEM_ID, pl.col("index").cast(pl.Int32))
    )
    low, high = interactions.select(pl.col(FEEDBACK).min().alias("low"), pl.col(FEEDBACK).max().alias("high")).row(0)
    span = high - low
    reward = ((pl.col(FEEDBACK) - low) / span) if span > 0 else pl.lit(1.0)
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
    state_lengths = np.minimum(events["step"].to_numpy(), config.state_length)
    steps = events.with_columns(
        trailing_windows(events["action"], state_lengths).alias("state_items"),
        trailing_windows(events["reward"], state_lengths).alias("state_feedback"),
    ).select(list(TRAJECTORY_SCHEMA)).cast(TRAJECTORY_SCHEMA)
    stats = TrajectoryStats(
        version=version,
        users=steps[USER_ID].n_unique(),
        items=catalogue.height,
        episodes=steps.filter(pl.col("done")).height,
        steps=steps.height,
        feedback_min=float(low),
        feedback_max=float(high),
    )
    return TrajectorySet(steps, catalogue, stats)


def trajectory_version(store: Store, dataset: str, config: TrajectoryConfig, rule: EpisodeRule) -> str:
    """Hash of the dataset snapshot (the ingested interaction files) and the build configuration."""
    snapshot = sorted(sha for sha, e in store.manifest(dataset).items() if e.kind == "interactions")
    payload = {"snapshot": snapshot, "config": config.model_dump(), "rule": rule.fingerprint(), "builder": BUILDER_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def trajectory_dir(dataset: str, version: str) -> str:
    return f"trajectories/dataset={dataset}/version={version}"


def build_or_reuse(store: Store, dataset: str, config: TrajectoryConfig) -> tuple[TrajectorySet, bool]:
    """The trajectory set of the store's current snapshot of ``dataset``; True when it was built just now."""
    rule = episode_rule(config)
    version = trajectory_version(store, dataset, config, rule)
    existing = load_trajectories(store, dataset, version)
    if existing is not None:
        return existing, False
    scan = store.scan_interactions(dataset)
    if scan is None:
        raise InputError(f"dataset {dataset!r} has no stored interactions in {store.uri}: ingest it first")
    built = build_trajectories(scan.select(USER_ID, ITEM_ID, TIMESTAMP, FEEDBACK).collect(), config, rule, version)
    return built, True


def save_trajectories(store: Store, dataset: str, trajectories: TrajectorySet) -> None:
    """Write steps and catalogue, then build.json last: a version without build.json is incomplete."""
    folder = trajectory_dir(dataset, trajectories.stats.version)
    store.write_parquet(trajectories.steps, f"{folder}/steps.parquet")
    store.write_parquet(trajectories.catalogue, f"{folder}/catalogue.parquet")
    store.write_json(asdict(trajectories.stats), f"{folder}/build.json")
    store.write_json({"version": trajectories.stats.version}, f"trajectories/dataset={dataset}/CURRENT.json")


def load_trajectories(store: Store, dataset: str, version: str | None = None) -> TrajectorySet | None:
    """The stored set ``version`` (default: the latest built), or None when it does not exist."""
    if version is None:
        current = store.read_json(f"trajectories/dataset={dataset}/CURRENT.json")
        if current is None:
            return None
        version = current["version"]
    folder = trajectory_dir(dataset, version)
    stats = store.read_json(f"{folder}/build.json")
    if stats is None:
        return None
    steps = pl.read_parquet(store.url(f"{folder}/steps.parquet"))
    catalogue = pl.read_parquet(store.url(f"{folder}/catalogue.parquet"))
    return TrajectorySet(steps, catalogue, TrajectoryStats(**stats))
