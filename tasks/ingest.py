"""The ingest chain: read new files -> validate -> store -> build trajectories -> validate.

The chain is written once (``run_ingest``) over a table of steps. ``PLAIN_STEPS`` call the functions directly
(``mdt4rec ingest``); ``TASK_STEPS`` are the same functions as Prefect tasks (the ``ingest-logs`` flow), so that each
step shows up as a task run with its own state, logs and duration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from mdt4rec_core.config import DatasetConfig, PipelineConfig, TrajectoryConfig
from mdt4rec_core.data.ingest import IngestBatch, IngestReport, check_readable, commit, read_new_files
from mdt4rec_core.data.store import Store
from mdt4rec_core.data.trajectories import TrajectorySet, build_or_reuse, save_trajectories
from tasks.validation import (
    ValidationFailed, ValidationReport, reports_dir, validate_interactions, validate_trajectories,
)


def read_logs(dataset: DatasetConfig, store_uri: str) -> IngestBatch:
    batch = read_new_files(dataset, Store(store_uri))
    check_readable(batch)
    return batch


def check_interactions(batch: IngestBatch, store_uri: str) -> ValidationReport | None:
    """Validate the batch's accepted rows before anything is stored; raise ValidationFailed when they fail."""
    if not batch.files:
        return None
    report = validate_interactions(batch.accepted, reports_dir(Store(store_uri), batch.dataset))
    _raise_on_failure(report)
    return report


def store_logs(batch: IngestBatch, store_uri: str) -> IngestReport:
    return commit(batch, Store(store_uri))


def build_steps(store_uri: str, dataset: str, config: TrajectoryConfig) -> tuple[TrajectorySet | None, bool]:
    """The trajectory set of what is stored (None while nothing is) and whether it was built just now."""
    store = Store(store_uri)
    if not store.interaction_parts(dataset):
        return None, False
    return build_or_reuse(store, dataset, config)


def check_and_save_trajectories(
    trajectories: TrajectorySet | None, built: bool, config: TrajectoryConfig, store_uri: str, dataset: str
) -> ValidationReport | None:
    """Validate a newly built set and save it (a reused set was validated when it was built)."""
    if trajectories is None or not built:
        return None
    store = Store(store_uri)
    report = validate_trajectories(trajectories.steps, config, trajectories.catalogue.height, reports_dir(store, dataset))
    _raise_on_failure(report)
    save_trajectories(store, dataset, trajectories)
    return report


@dataclass(frozen=True)
class IngestSteps:
    read_logs: Callable[..., IngestBatch]
    check_interactions: Callable[..., ValidationReport | None]
    store_logs: Callable[..., IngestReport]
    build_steps: Callable[..., tuple[TrajectorySet | None, bool]]
    check_and_save_trajectories: Callable[..., ValidationReport | None]


PLAIN_STEPS = IngestSteps(read_logs, check_interactions, store_logs, build_steps, check_and_save_trajectories)
TASK_STEPS = IngestSteps(
    *(task(step, name=step.__name__.replace("_", "-"), cache_policy=NO_CACHE)
      for step in (getattr(PLAIN_STEPS, f.name) for f in fields(IngestSteps)))
)


def run_ingest(config: PipelineConfig, dataset: DatasetConfig, steps: IngestSteps = PLAIN_STEPS) -> dict[str, Any]:
    """Run the chain for ``dataset`` into ``config.store`` and return the run's summary (JSON-ready)."""
    started = time.perf_counter()
    store = Store(config.store)
    with store.writer_lock(dataset.name):
        batch = steps.read_logs(dataset, store.uri)
        interactions_report = steps.check_interactions(batch, store.uri)
        ingest = steps.store_logs(batch, store.uri)
        trajectories, built = steps.build_steps(store.uri, dataset.name, config.trajectories)
        trajectories_report = steps.check_and_save_trajectories(
            trajectories, built, config.trajectories, store.uri, dataset.name
        )
    stats = trajectories.stats if trajectories is not None else None
    return {
        **asdict(ingest),
        "users": stats.users if stats else 0,
        "items": stats.items if stats else 0,
        "episodes": stats.episodes if stats else 0,
        "steps": stats.steps if stats else 0,
        "trajectory_version": stats.version if stats else None,
        "trajectories_built": built,
        "store": store.uri,
        "validation": {r.suite: r.as_dict() for r in (interactions_report, trajectories_report) if r is not None},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _raise_on_failure(report: ValidationReport) -> None:
    if not report.success:
        raise ValidationFailed(report.summary())
