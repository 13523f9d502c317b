"""Flow ``ingest-logs``: new raw logs -> validated Parquet interactions -> validated trajectories."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mdt4rec_core.config import ReaderFormat, load_run_config
from tasks.ingest import dataset_to_ingest, run_ingest, task_steps

INGEST_TASKS = task_steps()


@flow(name="ingest-logs", log_prints=True)
def ingest_logs(
    dataset: str = "ml-1m",
    store: str | None = None,
    source: str | None = None,
    format: ReaderFormat | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Ingest ``dataset`` (conf/datasets/<name>.yaml, or ``format`` files at ``source``) and the new files dropped in
    ``<landing>/<dataset>/`` into ``store``.

    ``overrides`` are ``key.path=value`` assignments on the run configuration (e.g. trajectories.state_length=20).
    """
    config = load_run_config(dataset=dataset, overrides=list(overrides or []), store=store)
    summary = run_ingest(config, dataset_to_ingest(config, source, format), INGEST_TASKS)
    create_markdown_artifact(
        markdown=ingest_summary_markdown(summary),
        key=f"ingest-{_slug(dataset)}",
        description="Rows read, accepted and quarantined; trajectory set built",
    )
    return summary


def ingest_summary_markdown(summary: dict[str, Any]) -> str:
    rows = [
        ("rows read", summary["rows_read"]),
        ("rows accepted", summary["rows_accepted"]),
        ("rows quarantined", summary["rows_quarantined"]),
        ("files ingested", summary["files_ingested"]),
        ("files skipped (already ingested)", summary["files_skipped"]),
        ("users", summary["users"]),
        ("items", summary["items"]),
        ("episodes", summary["episodes"]),
        ("steps", summary["steps"]),
        ("trajectory version", summary["trajectory_version"]),
        ("seconds", summary["seconds"]),
    ]
    table = "\n".join(
        f"| {name} | {value:,} |" if isinstance(value, int) else f"| {name} | {value} |" for name, value in rows
    )
    return f"# Ingest of `{summary['dataset']}`\n\n| | |\n|---|---|\n{table}\n"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())
