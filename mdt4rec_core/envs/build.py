"""Building a dataset's environment from the store: ground-truth rewards, quit rule, and who may start episodes.

Protocols:

- ``paper`` (as published, comparable with EasyRL4Rec numbers): the ground truth is fitted on a random 90 % of all
  logged feedback, episodes start from any user, and a policy may learn from every user's log. The policy's training
  data and the simulator overlap, so this protocol leaks.
- ``strict``: users are split by a hash of their id; the held-out 20 % start every evaluation episode, and the
  ground truth (and the item distances of the quit rule) come from their feedback only; a policy learns from the
  other 80 % only. A distance threshold is then taken at ``threshold_percentile`` of the held-out distances, since
  published thresholds are calibrated on all users.

Built environments are stored under ``environments/dataset=<name>/protocol=<p>/version=<hash>/``, keyed by the
dataset snapshot, the protocol, the quit rule and the factorisation recipe.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import torch

from mdt4rec_core.config import PROTOCOLS, DatasetConfig, EnvironmentSpec, FactorisationConfig, Protocol
from mdt4rec_core.data.catalogue import HELD_OUT_FRACTION, held_out, item_catalogue
from mdt4rec_core.data.schema import FEEDBACK, ITEM_ID, USER_ID
from mdt4rec_core.data.store import Store
from mdt4rec_core.envs.ground_truth import factorise
from mdt4rec_core.envs.quit_rules import DistanceQuit, QuitRule, RepeatQuit
from mdt4rec_core.errors import InputError

ENVIRONMENT_BUILDER_VERSION = 2
DEFAULT_RECIPE = FactorisationConfig()


@dataclass(frozen=True)
class EnvironmentInfo:
    dataset: str
    protocol: str
    version: str
    users: int
    items: int
    start_users: int
    train_users: int
    quit_rule: dict
    threshold_percentile: float | None
    factorisation_train_mse: float
    factorisation_held_out_mse: float
    build_seconds: float


@dataclass(frozen=True)
class Environment:
    """``rewards`` (U, I) float32; ``user_ids`` (U,) and ``catalogue`` (item_id -> index) name the axes;
    ``start_users`` / ``train_users`` are user indices; ``item_counts`` (I,) counts the training users who
    interacted with each item (what a popularity policy may learn)."""

    info: EnvironmentInfo
    rewards: np.ndarray
    quit_rule: QuitRule
    user_ids: np.ndarray
    catalogue: pl.DataFrame
    start_users: np.ndarray
    train_users: np.ndarray
    item_counts: np.ndarray


def simulator_spec(dataset: DatasetConfig) -> EnvironmentSpec:
    """The dataset's quit rule; an InputError for a dataset without a simulator."""
    if dataset.environment is None:
        raise InputError(f"dataset {dataset.name!r} has no simulator (no environment: in its configuration)")
    return dataset.environment


def environment_dir(dataset: str, protocol: str, version: str) -> str:
    return f"environments/dataset={dataset}/protocol={protocol}/version={version}"


def environment_version(store: Store, dataset: DatasetConfig, protocol: Protocol, recipe: FactorisationConfig) -> str:
    snapshot = sorted(
        sha for sha, entry in store.manifest(dataset.name).items() if entry.kind in ("interactions", "items")
    )
    payload = {
        "snapshot": snapshot,
        "protocol": protocol,
        "spec": simulator_spec(dataset).model_dump(),
        "recipe": recipe.model_dump(),
        "builder": ENVIRONMENT_BUILDER_VERSION,
        "held_out": HELD_OUT_FRACTION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_environment(
    store: Store, dataset: DatasetConfig, protocol: Protocol, recipe: FactorisationConfig = DEFAULT_RECIPE
) -> Environment:
    """Fit the ground truth and quit rule of ``dataset`` under ``protocol`` from what the store holds."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    scan = store.scan_interactions(dataset.name)
    if scan is None:
        raise InputError(f"dataset {dataset.name!r} has no stored interactions in {store.uri}: ingest it first")
    started = time.perf_counter()
    events = scan.select(USER_ID, ITEM_ID, FEEDBACK).collect()
    catalogue = item_catalogue(events[ITEM_ID])
    user_ids = events[USER_ID].unique().sort()
    is_held_out = user_ids.to_frame().select(held_out(pl.col(USER_ID))).to_series().to_numpy()
    ratings = (
        events.group_by(USER_ID, ITEM_ID)
        .agg(pl.col(FEEDBACK).mean())
        .join(user_ids.to_frame().with_row_index("user"), on=USER_ID)
        .join(catalogue, on=ITEM_ID)
        .sort("user", "index")
    )
    user_index, item_index = ratings["user"].to_numpy(), ratings["index"].to_numpy()
    if protocol == "strict":
        fitted_on = is_held_out[user_index]
        start_users, train_users = np.flatnonzero(is_held_out), np.flatnonzero(~is_held_out)
    else:
        fitted_on = np.ones(len(ratings), dtype=bool)
        start_users = train_users = np.arange(len(user_ids))
    if not len(start_users) or not fitted_on.any():
        raise InputError(f"dataset {dataset.name!r} has too few users for the {protocol} protocol")
    fit = factorise(
        user_index[fitted_on],
        item_index[fitted_on],
        ratings[FEEDBACK].to_numpy()[fitted_on],
        len(user_ids),
        catalogue.height,
        recipe,
    )
    rewards = fit.matrix(recipe.clip_min, recipe.clip_max)
    # Item distances over the users who start episodes: under strict, the other rows were never fitted. The published
    # thresholds are calibrated on all users of the dataset, so strict takes the threshold at the same percentile.
    spec = simulator_spec(dataset)
    if protocol == "strict" and spec.threshold is not None:
        spec = spec.model_copy(update={"threshold": None})
    quit_rule, percentile = _quit_rule(store, dataset, spec, rewards[start_users], catalogue)
    item_counts = np.bincount(item_index[np.isin(user_index, train_users)], minlength=catalogue.height)
    info = EnvironmentInfo(
        dataset=dataset.name,
        protocol=protocol,
        version=environment_version(store, dataset, protocol, recipe),
        users=len(user_ids),
        items=catalogue.height,
        start_users=len(start_users),
        train_users=len(train_users),
        quit_rule=quit_rule.describe(),
        threshold_percentile=percentile,
        factorisation_train_mse=fit.train_mse,
        factorisation_held_out_mse=fit.held_out_mse,
        build_seconds=time.perf_counter() - started,
    )
    return Environment(info, rewards, quit_rule, user_ids.to_numpy(), catalogue, start_users, train_users, item_counts)


def item_distances(rewards: np.ndarray) -> np.ndarray:
    """(I, I) float32 Euclidean distances between the item columns of ``rewards`` (U, I)."""
    columns = torch.as_tensor(np.ascontiguousarray(rewards.T))
    return torch.cdist(columns, columns).numpy()


def _quit_rule(
    store: Store, dataset: DatasetConfig, spec: EnvironmentSpec, rewards: np.ndarray, catalogue: pl.DataFrame
) -> tuple[QuitRule, float | None]:
    if spec.quit == "distance":
        distances = item_distances(rewards)
        if spec.threshold is not None:
            return DistanceQuit(distances, spec.threshold, spec.window), None
        upper = distances[np.triu_indices(len(distances), k=1)]
        threshold = float(np.percentile(upper, spec.threshold_percentile)) if len(upper) else 1.0
        return DistanceQuit(distances, threshold, spec.window), spec.threshold_percentile
    features = item_features(store, dataset, spec, catalogue)
    return RepeatQuit(features, spec.window, spec.max_occurrences, name=spec.quit), None


def item_features(store: Store, dataset: DatasetConfig, spec: EnvironmentSpec, catalogue: pl.DataFrame) -> np.ndarray:
    """(I, F) bool: the integers listed in the item table's ``feature_column`` ("[8]", "[27, 9]", "28,7"), one column
    per distinct value; items missing from the table have none."""
    path = f"items/dataset={dataset.name}/items.parquet"
    if spec.feature_column is None or not store.exists(path):
        raise InputError(
            f"dataset {dataset.name!r}: the {spec.quit} quit rule needs an item table with column "
            f"{spec.feature_column!r} (ingest it with the dataset's items file)"
        )
    items = store.read_parquet(path)
    if spec.feature_column not in items.columns:
        raise InputError(f"{path}: no column {spec.feature_column!r} for the {spec.quit} quit rule")
    listed = (
        catalogue.join(
            items.select(ITEM_ID, pl.col(spec.feature_column).str.extract_all(r"\d+").alias("f")),
            on=ITEM_ID,
            how="left",
        )
        .explode("f")
        .drop_nulls("f")
        .with_columns(pl.col("f").cast(pl.Int64))
    )
    values = np.unique(listed["f"].to_numpy())
    features = np.zeros((catalogue.height, len(values)), dtype=bool)
    features[listed["index"].to_numpy(), np.searchsorted(values, listed["f"].to_numpy())] = True
    return features


def save_environment(store: Store, environment: Environment) -> None:
    """Arrays first, env.json last (a version without env.json is incomplete)."""
    info = environment.info
    folder = environment_dir(info.dataset, info.protocol, info.version)
    arrays = {
        "rewards": environment.rewards,
        "start_users": environment.start_users,
        "train_users": environment.train_users,
        "item_counts": environment.item_counts,
    }
    rule = environment.quit_rule
    arrays["rule_matrix"] = rule.distances if isinstance(rule, DistanceQuit) else rule.features
    for name, array in arrays.items():
        _write_array(store, f"{folder}/{name}.npy", array)
    store.write_parquet(pl.DataFrame({USER_ID: environment.user_ids}), f"{folder}/users.parquet")
    store.write_parquet(environment.catalogue, f"{folder}/catalogue.parquet")
    store.write_json(asdict(info), f"{folder}/env.json")


def load_environment(
    store: Store, dataset: DatasetConfig, protocol: Protocol, recipe: FactorisationConfig = DEFAULT_RECIPE
) -> Environment | None:
    """The stored environment for the store's current snapshot of ``dataset``, or None; a stored file that cannot
    be read is a StoreError naming it."""
    version = environment_version(store, dataset, protocol, recipe)
    folder = environment_dir(dataset.name, protocol, version)
    payload = store.read_json(f"{folder}/env.json")
    if payload is None:
        return None
    arrays = {
        n: store.read_array(f"{folder}/{n}.npy")
        for n in ("rewards", "start_users", "train_users", "item_counts", "rule_matrix")
    }
    with store.reading(f"{folder}/env.json"):
        info = EnvironmentInfo(**payload)
        rule = _stored_quit_rule(info.quit_rule, arrays["rule_matrix"])
    user_ids = store.read_parquet(f"{folder}/users.parquet")[USER_ID].to_numpy()
    catalogue = store.read_parquet(f"{folder}/catalogue.parquet")
    return Environment(
        info,
        arrays["rewards"],
        rule,
        user_ids,
        catalogue,
        arrays["start_users"],
        arrays["train_users"],
        arrays["item_counts"],
    )


def _stored_quit_rule(spec: dict, matrix: np.ndarray) -> QuitRule:
    """The quit rule described by ``spec`` (``QuitRule.describe()``) over its stored distance or feature matrix."""
    if spec["rule"] == "distance":
        return DistanceQuit(matrix, spec["threshold"], spec["window"])
    return RepeatQuit(matrix, spec["window"], spec["max_occurrences"], name=spec["rule"])


def build_or_load(
    store: Store, dataset: DatasetConfig, protocol: Protocol, recipe: FactorisationConfig = DEFAULT_RECIPE
) -> tuple[Environment, bool]:
    """The cached environment when the data and recipe are unchanged, else a new build (saved); True if built."""
    cached = load_environment(store, dataset, protocol, recipe)
    if cached is not None:
        return cached, False
    environment = build_environment(store, dataset, protocol, recipe)
    save_environment(store, environment)
    return environment, True


def _write_array(store: Store, relative: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    store.write_bytes(buffer.getvalue(), relative)
