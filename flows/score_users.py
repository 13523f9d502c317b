"""Flow ``score-users``: a model (by default the registered champion) recommends the top-k items to a dataset's
users from their stored logs, into the store: ``recommendations/dataset=<d>/model=<label>/part-*.parquet`` with
``scoring.json`` written last (tasks/scoring.py)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mdt4rec_core.config import load_run_config
from tasks import scoring
from tasks.prefect_task import as_task

score = as_task(scoring.score_users, "score")
save = as_task(scoring.save_to_store, "save-recommendations")


@flow(name="score-users", log_prints=True)
def score_users(
    model: str = "models:/mdt4rec@champion",
    users: str = "all",
    k: int = 10,
    dataset: str | None = None,
    store: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Score ``users`` (``all`` or a file of user ids) of ``dataset`` (default: the model's training dataset) in
    ``store`` (default: conf/pipeline.yaml) with ``model`` (a ``models:/`` URI or a checkpoint folder) on ``device``
    (default: the model's search settings, auto: CUDA when present); the summary, which names every skipped user
    id's count and first few."""
    config = load_run_config(store=store)
    summary = save(score(model, users, k, config.store, dataset, config.tracking, device))
    for line in scoring.skipped_lines(summary):
        print(line)
    create_markdown_artifact(
        markdown=scoring_markdown(summary),
        key="score-users",
        description=f"Users of {summary['dataset']} scored and skipped, where the recommendations are",
    )
    return summary


def scoring_markdown(summary: dict[str, Any]) -> str:
    rows = [
        ("model", summary["model"]),
        ("users scored", f"{summary['users_scored']:,}"),
        ("unknown user ids skipped", f"{summary['unknown_users']:,}"),
        ("users without a known item skipped", f"{summary['users_without_known_items']:,}"),
        ("k", summary["k"]),
        ("rows", f"{summary['rows']:,}"),
        ("users per second", summary["users_per_second"]),
        ("recommendations", f"`{summary['out']}`"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"# Recommendations for `{summary['dataset']}`\n\n| | |\n|---|---|\n{table}\n"
