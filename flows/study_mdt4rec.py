"""Flow ``study-mdt4rec``: prepare each protocol -> one task per (protocol, arm, seed) cell -> summarise -> MLflow ->
a markdown artifact with the table.

The steps are the functions of tasks/study.py (``mdt4rec study`` runs the same steps without Prefect). Cells run one
at a time: they train with torch's global random state, so cells sharing a process concurrently would not be
reproducible. A finished cell (its ``cell.json``) is never run again, so a rerun only runs what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from mdt4rec_core.config import load_pipeline_config
from tasks import study, tracking

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


def _task(function, name: str):
    return task(function, name=name, cache_policy=NO_CACHE)


connect_tracking = _task(tracking.connect, "connect-tracking")
prepare_protocol = _task(study.prepare_protocol, "prepare-protocol")
run_cell = _task(study.run_study_cell, "run-cell")
summarise = _task(study.summarise_study, "summarise")
log_study = _task(study.log_study, "log-study")


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
    started = time.perf_counter()
    request = StudyRequest(budget=budget, dataset=dataset, seeds=seeds, overrides=overrides, store=store, out=out)
    assignments = list(request.overrides or [])
    config = study.load_budget(request.budget, assignments, request.dataset)
    source = study.study_dataset(config)
    pipeline = load_pipeline_config(store=request.store)
    root = study.study_root(request.out, config.dataset, request.budget)
    cells = study.plan_cells(config, request.seeds, root)
    study.check_study_folder(root, config)
    client = connect_tracking(pipeline.tracking)
    reused = sum((cell.folder / "cell.json").is_file() for cell in cells)

    inputs = {protocol: prepare_protocol(pipeline.store, source, protocol) for protocol in config.protocols}
    futures = [
        run_cell.with_options(task_run_name=f"cell-{c.protocol}-{c.arm}-seed-{c.seed}").submit(
            inputs[c.protocol], config, c
        )
        for c in cells
    ]
    records, failed = [], []
    for cell, future in zip(cells, futures, strict=True):
        try:
            records.append(future.result())
        except Exception as error:  # every cell runs; the flow fails afterwards naming the failed ones
            failed.append((cell, error))
    if failed:
        names = ", ".join(f"{c.protocol}/{c.arm}/seed-{c.seed}" for c, _ in failed)
        raise RuntimeError(f"{len(failed)} of {len(cells)} cells failed: {names}") from failed[0][1]

    command = study.study_command(
        request.budget, request.seeds, pipeline.store, request.out, assignments, request.dataset
    )
    seconds = time.perf_counter() - started
    result = summarise(config, request.budget, request.seeds, records, root, command, seconds, reused)
    result["mlflow"] = log_study(pipeline.tracking, result, client)
    create_markdown_artifact(
        markdown=Path(result["paths"]["markdown"]).read_text(encoding="utf-8"),
        key=f"study-{_slug(config.dataset)}-{request.budget}",
        description="Study: R_cumu per arm, protocol and mode",
    )
    return result


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())
