"""The ingest chain: plan -> per batch of new files (read -> validate -> store) -> side tables -> build trajectories
-> validate and save.

The chain is written once (``run_ingest``) over a table of steps. ``PLAIN_STEPS`` call the functions directly
(``mdt4rec ingest``); ``task_steps()`` are the same functions as Prefect tasks (the ``ingest-logs`` flow), so that each
step shows up as a task run with its own state, logs and duration.

What ``mdt4rec_core`` logs (such as waiting for a writer lock) goes to the console and, inside a Prefect run, into
the run's log too. A failed validation's error names the files whose rows failed; a Prefect run logs it and also
publishes it as a markdown artifact.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from mdt4rec_core.config import DatasetConfig, IngestConfig, ReaderFormat, RunConfig, TrajectoryConfig, resolve_dataset
from mdt4rec_core.data.ingest import (
    IngestBatch,
    IngestPlan,
    IngestReport,
    check_readable,
    commit,
    ingest_side_tables,
    plan_ingest,
    read_batch,
    with_run_settings,
)
from mdt4rec_core.data.schema import USER_ID
from mdt4rec_core.data.sources import SourceFile
from mdt4rec_core.data.store import Store
from mdt4rec_core.data.trajectories import (
    TrajectoryStats,
    build_bucket,
    finish_build,
    plan_trajectories,
    save_bucket,
    set_current,
    stored_stats,
    trajectory_stats,
)
from mdt4rec_core.envs.episodes import stored_episode_rule
from tasks.prefect_task import in_a_run
from tasks.validation import (
    ValidationFailed,
    ValidationReport,
    failure_message,
    files_failing_interactions,
    reports_dir,
    validate_interactions,
    validate_trajectories,
)


def dataset_to_ingest(run: RunConfig, source: str | None = None, format: ReaderFormat | None = None) -> DatasetConfig:
    """What a run ingests: ``run.dataset``'s configured files (or ``format`` files at ``source``), then the files
    dropped in ``<run.landing>/<run.dataset>/``. The ``train-mdt4rec`` and ``ingest-logs`` flows and ``mdt4rec
    ingest`` all ingest this."""
    dataset = resolve_dataset(run.dataset, source, format)
    return dataset.model_copy(update={"landing": str(Path(run.landing) / run.dataset)})


def plan_logs(dataset: DatasetConfig, store_uri: str, config: IngestConfig) -> IngestPlan:
    return plan_ingest(dataset, Store(store_uri), int(config.batch_megabytes * 2**20))


def read_logs(dataset: DatasetConfig, files: list[tuple[int, SourceFile]], store_uri: str) -> IngestBatch:
    return read_batch(dataset, files, Store(store_uri))


def check_interactions(batch: IngestBatch, store_uri: str) -> ValidationReport:
    """Validate the batch's accepted rows before anything is stored; raise ValidationFailed naming the files whose
    rows fail."""
    now = dt.datetime.now(dt.UTC)
    report = validate_interactions(batch.accepted, reports_dir(Store(store_uri), batch.dataset), now)
    if not report.success:
        fail_validation(report, files_failing_interactions(batch.accepted, now))
    return report


def fail_validation(report: ValidationReport, sources: list[str]) -> NoReturn:
    """Raise ValidationFailed naming the ``sources`` whose rows failed; inside a Prefect run, first publish the
    message as a markdown artifact of the run."""
    message = failure_message(report, sources)
    if in_a_run():
        from prefect.artifacts import create_markdown_artifact

        listed = "\n".join(f"- `{source}`" for source in sources)
        create_markdown_artifact(
            markdown=f"# Validation failed\n\nRows of:\n\n{listed}\n\n```\n{message}\n```\n",
            description=f"suite {report.suite!r} failed on rows of {len(sources)} source(s)",
        )
    raise ValidationFailed(message)


def store_logs(batch: IngestBatch, store_uri: str) -> IngestReport:
    return commit(batch, Store(store_uri))


def store_side_tables(dataset: DatasetConfig, store_uri: str) -> dict[str, int]:
    return ingest_side_tables(dataset, Store(store_uri))


def build_trajectories(
    store_uri: str, dataset: DatasetConfig, config: TrajectoryConfig, make_current: bool = True
) -> TrajectoryBuild:
    """Build (or reuse) the trajectory set of what is stored, its episodes cut by the rule ``config.cut_by`` names
    (``envs.episodes.stored_episode_rule``), bucket by bucket: each bucket is validated before it is
    saved, and the set becomes current only when every bucket passed (and ``make_current``: a study builds the sets
    of its protocols without switching what the pipeline trains on)."""
    store = Store(store_uri)
    plan = None
    if store.interaction_parts(dataset.name):  # a quit-rule cut builds the dataset's environment from what is stored
        plan = plan_trajectories(store, dataset.name, config, stored_episode_rule(store, dataset, config))
    if plan is None:
        return TrajectoryBuild(None, built=False, checks=[])
    existing = stored_stats(store, dataset.name, plan.version)
    if existing is not None:
        if make_current:  # built before for a study, or current before a run with other settings
            set_current(store, dataset.name, plan.version)
        return TrajectoryBuild(existing, built=False, checks=[])
    parts, checks = [], []
    for bucket in range(plan.buckets):
        steps = build_bucket(store, plan, bucket)
        report = validate_trajectories(steps, config, plan.catalogue.height, reports_dir(store, dataset.name))
        if not report.success:
            fail_validation(report, [f"{store.url(plan.folder)}/steps/part-{bucket:05d}.parquet (not saved)"])
        save_bucket(store, plan, bucket, steps)
        parts.append(steps.select(USER_ID, "done"))
        checks.append(report)
    stats = trajectory_stats(parts, plan.version, plan.catalogue.height, plan.feedback_min, plan.feedback_max)
    finish_build(store, plan, stats, make_current)
    return TrajectoryBuild(stats, built=True, checks=checks)


@dataclass(frozen=True)
class TrajectoryBuild:
    stats: TrajectoryStats | None  # None while nothing is stored
    built: bool  # False when an identical set already existed
    checks: list[ValidationReport]


@dataclass(frozen=True)
class IngestSteps:
    plan_logs: Callable[..., IngestPlan]
    read_logs: Callable[..., IngestBatch]
    check_interactions: Callable[..., ValidationReport]
    store_logs: Callable[..., IngestReport]
    store_side_tables: Callable[..., dict[str, int]]
    build_trajectories: Callable[..., TrajectoryBuild]


PLAIN_STEPS = IngestSteps(plan_logs, read_logs, check_interactions, store_logs, store_side_tables, build_trajectories)


def task_steps() -> IngestSteps:
    """The same steps as Prefect tasks (the flows' chain); Prefect is imported here, not by ``mdt4rec ingest``."""
    from tasks.prefect_task import as_task

    return IngestSteps(*(as_task(getattr(PLAIN_STEPS, f.name)) for f in fields(IngestSteps)))


def run_ingest(config: RunConfig, dataset: DatasetConfig, steps: IngestSteps = PLAIN_STEPS) -> dict[str, Any]:
    """Run the chain for ``dataset`` (with the run's ``config.ingest`` settings) into ``config.store`` and return the
    run's summary (JSON-ready)."""
    started = time.perf_counter()
    dataset = with_run_settings(dataset, config.ingest)
    store = Store(config.store)
    with store.writer_lock(dataset.name, config.ingest.lock_timeout_seconds):
        plan = steps.plan_logs(dataset, store.uri, config.ingest)
        batch_reports, interaction_checks = [], []
        for files in plan.batches:
            batch = steps.read_logs(dataset, files, store.uri)
            interaction_checks.append(steps.check_interactions(batch, store.uri))
            batch_reports.append(steps.store_logs(batch, store.uri))
            del batch
        side_tables = steps.store_side_tables(dataset, store.uri)
        ingest = IngestReport.combine(dataset.name, batch_reports, files_skipped=len(plan.skipped))
        check_readable(ingest)
        trajectories = steps.build_trajectories(store.uri, dataset, config.trajectories)
    stats = trajectories.stats
    return {
        **asdict(ingest),
        "users": stats.users if stats else 0,
        "items": stats.items if stats else 0,
        "episodes": stats.episodes if stats else 0,
        "steps": stats.steps if stats else 0,
        "trajectory_version": stats.version if stats else None,
        "trajectories_built": trajectories.built,
        "store": store.uri,
        "batches": len(plan.batches),
        "side_tables": side_tables,
        "validation": {
            "interactions": [r.as_dict() for r in interaction_checks],
            "trajectories": [r.as_dict() for r in trajectories.checks],
        },
        "seconds": round(time.perf_counter() - started, 3),
    }
