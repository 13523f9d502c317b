"""Flow ``study-mdt4rec``: prepare each protocol -> one task per (protocol, arm, seed) cell -> summarise -> MLflow ->
a markdown artifact with the table.

The chain is ``tasks.study.run_study`` with its steps as tasks (``mdt4rec study`` runs the same chain without
Prefect). Cells run one at a time: they train with torch's global random state, so cells sharing a process
concurrently would not be reproducible. A finished cell (its ``cell.json``) is never run again, so a rerun only
runs what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from mdt4rec_core.config import load_run_config
from tasks import study, tracking
from tasks.prefect_task import as_task

Budget = Literal["smoke", "cpu", "gpu"]


class StudyRequest(BaseModel):
    """The flow's parameters (the form in the Prefect UI; ``-p key=value`` on ``prefect deployment run``)."""

    model_config = ConfigDict(extra="forbid")

    budget: Budget = Field("smoke", description="conf/studies/<budget>.yaml")
    dataset: str | None = Field(None, description="conf/datasets/<dataset>.yaml (default: the budget's dataset)")
    seeds: int = Field(3, ge=1, description="seeds 0..seeds-1 of every (protocol, arm)")
    overrides: list[str] | None = Field(None, description="key=value changes to the budget, e.g. episodes=100")
    store: str | None = Field(None, description="store root (default: conf/pipeline.yaml)")
    out: str = Field("studies", description="the study goes to <out>/<dataset>-<budget>/")


connect_tracking = as_task(tracking.connect, "connect-tracking")
log_study = as_task(study.log_study, "log-study")


@flow(name="study-mdt4rec", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def study_mdt4rec(
    budget: Budget = "smoke",
    dataset: str | None = None,
    seeds: int = 3,
    overrides: list[str] | None = None,
    store: str | None = None,
    out: str = "studies",
) -> dict[str, Any]:
    """Run the study ``budget`` (every protocol, arm and seed), summarise it and log it to MLflow."""
    request = StudyRequest(budget=budget, dataset=dataset, seeds=seeds, overrides=overrides, store=store, out=out)
    assignments = list(request.overrides or [])
    config = study.load_budget(request.budget, assignments, request.dataset)  # bad input fails before any work
    run = load_run_config(store=request.store)
    client = connect_tracking(run.tracking)
    result = study.run_study(
        request.budget, request.seeds, run.store, request.out, assignments, request.dataset, steps=study.TASK_STEPS
    )
    result["mlflow"] = log_study(run.tracking, result, client)
    create_markdown_artifact(
        markdown=Path(result["paths"]["markdown"]).read_text(encoding="utf-8"),
        key=f"study-{_slug(config.dataset)}-{request.budget}",
        description="Study: R_cumu per arm, protocol and mode",
    )
    return result


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())
