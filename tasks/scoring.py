"""Batch scoring as the pipeline runs it: a model (a checkpoint folder, or a registered version named by a
``models:/`` URI) scores a dataset's users (all, or those a file lists) from their stored logs, and their top-k
rows go into the store or into a Parquet file.

In the store the rows of one (dataset, model) live in ``recommendations/dataset=<d>/model=<label>/`` as
``part-*.parquet`` files, with ``scoring.json`` (the run's summary) written last: a folder without it is being
written or was left half-way. ``<label>`` is ``<name>-v<version>`` for a registered version and
``checkpoint-<hash of its files>`` for a folder. Scoring again replaces the folder's parts under the dataset's
writer lock. Requested user ids with no stored event are skipped and reported (count and first few), never
silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from mlflow.exceptions import MlflowException

from mdt4rec_core.config import TrackingConfig
from mdt4rec_core.data.store import Store
from mdt4rec_core.errors import InputError, describe_os_error
from mdt4rec_core.inference.batch import score_histories
from mdt4rec_core.inference.histories import history_length, logged_histories, read_user_ids
from mdt4rec_core.inference.recommend import Recommender
from tasks.tracking import connect, download_model, tracking_uri

REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))")
CHECKPOINT_FILES = ("config.json", "model.safetensors", "catalogue.parquet", "metadata.json", "run_config.json")
MARKER = "scoring.json"
PART_ROWS = 1_000_000
EXAMPLES = 5
"""Skipped user ids named in a summary (the count covers them all)."""


@dataclass(frozen=True)
class Scored:
    """``frame``: the rows (``inference.batch.RECOMMENDATION_SCHEMA``); ``summary``: what was scored and skipped."""

    frame: pl.DataFrame
    summary: dict[str, Any]


def load_model(source: str, tracking: TrackingConfig, device: str | None = None) -> tuple[Recommender, str]:
    """The model named by ``source`` and its label: a registered version (``models:/<name>/<version>`` or
    ``models:/<name>@<alias>``, from MLFLOW_TRACKING_URI or ``tracking``'s URI) or a checkpoint folder, placed on
    ``device`` (default: its search settings')."""
    if not source.startswith("models:/"):
        checkpoint = Path(source)
        if not checkpoint.is_dir():
            raise InputError(f"{source}: no checkpoint folder there (give a checkpoint folder or a models:/ URI)")
        return Recommender(checkpoint, device=device), f"checkpoint-{checkpoint_hash(checkpoint)}"
    match = REGISTERED.fullmatch(source)
    if match is None:
        raise InputError(f"{source}: not a registered model URI (models:/<name>/<version> or models:/<name>@<alias>)")
    client = connect(tracking)
    name, number, alias = match.group("name", "version", "alias")
    try:
        version = client.get_model_version(name, number) if number else client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise InputError(f"{source}: no such registered model version in {tracking_uri(tracking)}") from None
    with tempfile.TemporaryDirectory(prefix="mdt4rec-model-") as folder:
        recommender = Recommender(download_model(version, Path(folder)) / "artifacts" / "checkpoint", device=device)
    return recommender, f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-v{version.version}"


def checkpoint_hash(checkpoint: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the checkpoint's files (the same weights, catalogue and settings
    give the same label wherever the folder lies)."""
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = checkpoint / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def score_users(
    model: str,
    users: str,
    k: int,
    store: str,
    dataset: str | None,
    tracking: TrackingConfig,
    device: str | None = None,
) -> Scored:
    """The top-``k`` rows of ``users`` (``all`` or a file of user ids, see ``histories.read_user_ids``) of
    ``dataset`` (default: the one the model was trained on) in ``store``, scored by ``model`` on ``device`` (see
    ``load_model``). When no requested user can be scored, an InputError says why."""
    requested = None if users == "all" else read_user_ids(Path(users))
    recommender, label = load_model(model, tracking, device)
    dataset = dataset or recommender.dataset
    started = time.perf_counter()
    length = history_length(recommender.model)
    root = Store(store)
    histories = logged_histories(root, dataset, recommender.catalogue, requested, length)
    skipped = histories.unknown_users + histories.without_known_items
    if histories.frame.height == 0:
        asked = f"none of the {len(requested):,} users in {users}" if requested else "no user"
        raise InputError(
            f"{asked} has a stored event of dataset {dataset!r} on an item the model knows"
            + (f" (e.g. {', '.join(skipped[:EXAMPLES])})" if skipped else "")
        )
    generated_at = dt.datetime.now(dt.UTC)
    frame = score_histories(recommender, histories.frame, k, label, generated_at)
    seconds = time.perf_counter() - started
    summary = {
        "model": label,
        "model_source": model,
        "dataset": dataset,
        "store": root.uri,
        "users": users,
        "users_requested": len(requested) if requested is not None else None,
        "users_scored": histories.frame.height,
        "unknown_users": len(histories.unknown_users),
        "unknown_user_examples": histories.unknown_users[:EXAMPLES],
        "users_without_known_items": len(histories.without_known_items),
        "without_known_items_examples": histories.without_known_items[:EXAMPLES],
        "events_on_unknown_items": histories.events_on_unknown_items,
        "k": k,
        "history_length": length,
        "rows": frame.height,
        "generated_at": generated_at.isoformat(),
        "seconds": round(seconds, 2),
        "users_per_second": round(histories.frame.height / seconds, 1),
    }
    return Scored(frame, summary)


def skipped_lines(summary: dict[str, Any]) -> list[str]:
    """What a scoring skipped, one line per reason (none when nothing was skipped)."""
    lines = []
    if summary["unknown_users"]:
        lines.append(
            f"skipped {summary['unknown_users']:,} unknown user ids (no stored event in {summary['dataset']}), "
            f"e.g. {', '.join(summary['unknown_user_examples'])}"
        )
    if summary["users_without_known_items"]:
        lines.append(
            f"skipped {summary['users_without_known_items']:,} users whose events are all on items the model does "
            f"not know, e.g. {', '.join(summary['without_known_items_examples'])}"
        )
    if summary["events_on_unknown_items"]:
        lines.append(
            f"left {summary['events_on_unknown_items']:,} events on items the model does not know out of the histories"
        )
    return lines


def save_to_store(scored: Scored) -> dict[str, Any]:
    """Write the rows into the store the summary names (``recommendations/dataset=<d>/model=<label>/``), replacing
    an earlier scoring of the same model there; the summary with the folder's URL under ``out``."""
    summary = scored.summary
    store, dataset = Store(summary["store"]), summary["dataset"]
    folder = f"recommendations/dataset={dataset}/model={summary['model']}"
    with store.writer_lock(dataset):
        if store.exists(f"{folder}/{MARKER}"):
            store.delete(f"{folder}/{MARKER}")
        parts = []
        for number, start in enumerate(range(0, scored.frame.height, PART_ROWS)):
            parts.append(f"{folder}/part-{number:05d}.parquet")
            store.write_parquet(scored.frame.slice(start, PART_ROWS), parts[-1])
        for stale in set(store.files(folder, ".parquet")) - set(parts):
            store.delete(stale)
        summary = {**summary, "out": store.url(folder)}
        store.write_json({**summary, "parts": [part.rsplit("/", 1)[1] for part in parts]}, f"{folder}/{MARKER}")
    return summary


def save_to_file(scored: Scored, path: str) -> dict[str, Any]:
    """Write the rows to the Parquet file ``path`` (a temporary file beside it, then a rename: nothing is left
    half-written); the summary with ``out``."""
    target = Path(path).resolve()
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scored.frame.write_parquet(temporary, compression="zstd")
        os.replace(temporary, target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputError(f"{target}: cannot write ({describe_os_error(exc)})") from None
    return {**scored.summary, "out": str(target)}
