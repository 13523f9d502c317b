"""Flow ``train-mdt4rec``: new logs -> validated store -> trajectories -> simulators -> train -> evaluate -> register.

Deployed as ``train-mdt4rec/nightly`` (``mdt4rec deploy`` or prefect.yaml). Each run ingests what arrived in the
landing folder; a run with nothing new says so and trains nothing unless ``force``. The model is logged to MLflow
and registered; the alias ``champion`` moves only when the new version beats the champion (tasks/tracking.py).

Training is not repeated after a late failure: every finished training is remembered by its inputs (dataset, store,
trajectory set, network and training settings, processes; runs/<dataset>/by-inputs/). A run whose inputs match a
finished training that no registered version carries (its registration failed, e.g. the tracking server went
away) takes that checkpoint instead of training; once a version carries it, a run with the same inputs
(``force``) trains anew.
"""

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from mdt4rec_core.config import EvaluationPlan, Profile, RunConfig, ScaleConfig, load_run_config, resolve_dataset
from mdt4rec_core.envs.api import build_env, evaluate_policy
from tasks import reporting, tracking, training
from tasks.deployment import exit_with_parent
from tasks.ingest import TASK_STEPS, run_ingest
from tasks.prefect_task import as_task

RUNS_DIR = Path("runs")


class TrainRequest(BaseModel):
    """The flow's parameters (the form in the Prefect UI; ``-p key=value`` on ``prefect deployment run``)."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile = Field("cpu", description="conf/profiles/<profile>.yaml: smoke, cpu or paper")
    dataset: str = Field("ml-1m", description="conf/datasets/<dataset>.yaml")
    overrides: list[str] | None = Field(
        None, description="key.path=value changes to the run configuration (e.g. train.max_steps=50)"
    )
    force: bool = Field(
        False,
        description="train even when no new data arrived (a finished training of the same inputs that is not "
        "registered yet is registered instead)",
    )


connect_tracking = as_task(tracking.connect, "connect-tracking")
prepare_environment = as_task(build_env, "prepare-environment")
train_model = as_task(training.train_model, "train")
evaluate_checkpoint = as_task(training.evaluate_checkpoint, "evaluate")
champion_score = as_task(training.champion_score, "evaluate-champion")
evaluate_baseline = as_task(evaluate_policy, "evaluate-baseline")


@flow(name="train-mdt4rec", log_prints=True)
def train_mdt4rec(
    profile: Profile = "cpu", dataset: str = "ml-1m", overrides: list[str] | None = None, force: bool = False
) -> dict[str, Any]:
    """Ingest, validate, train, evaluate and register MDT4Rec on ``dataset`` with the ``profile`` run
    configuration."""
    exit_with_parent()
    request = TrainRequest(profile=profile, dataset=dataset, overrides=overrides, force=force)
    run = load_run_config(request.profile, request.dataset, request.overrides or [])
    client = connect_tracking(run.tracking)
    source = resolve_dataset(run.dataset).model_copy(update={"landing": str(Path(run.landing) / run.dataset)})
    ingest = run_ingest(run, source, TASK_STEPS)
    summary: dict[str, Any] = {"dataset": run.dataset, "profile": run.profile, "ingest": _ingest_view(ingest)}
    name = run.tracking.model_name
    trained_before = tracking.versions_for(client, name, run.dataset, ingest["trajectory_version"])
    if ingest["files_ingested"] == 0 and trained_before and not request.force:
        versions = ", ".join(str(v.version) for v in trained_before)
        summary["skipped"] = (
            f"no new data: trajectory set {ingest['trajectory_version']} was already trained on "
            f"(version {versions}); run with force=true to train again"
        )
        print(summary["skipped"])
        _publish(summary)
        return summary

    environments = {p: prepare_environment(run.store, run.dataset, p) for p in run.evaluation.protocols}
    trained = _trained(run, ingest["trajectory_version"], trained_before)
    evaluations = evaluate_all.with_options(task_runner=task_runner(run.scale))(
        run.store, run.dataset, trained["checkpoint"], run.evaluation
    )
    evaluation = run.evaluation
    wanted = (evaluation.gate.mode, evaluation.gate.protocol)
    gate_row = next(e for e in evaluations if (e["mode"], e["protocol"]) == wanted)
    mode, protocol = wanted
    baselines = [
        evaluate_baseline(run.store, run.dataset, baseline, mode, evaluation.episodes, evaluation.seeds, protocol)
        for baseline in evaluation.gate.baselines
    ]
    gate = tracking.Gate(
        tracking.gate_key(
            environments[gate_row["protocol"]]["version"],
            gate_row["mode"],
            gate_row["protocol"],
            evaluation.episodes,
            evaluation.seeds,
        ),
        float(gate_row["R_cumu"]),
        {row["policy"]: tracking.upper_bound(row["R_cumu"], row["R_cumu_ci95"]) for row in baselines},
    )
    registered = record_and_register(client, run, ingest, trained, evaluations, gate, baselines)
    summary.update(
        training={k: v for k, v in trained.items() if k != "history"},
        evaluation=reporting.evaluation_rows(evaluations),
        baselines=reporting.baseline_rows(baselines),
        registration=registered["registration"],
        mlflow_run_id=registered["run_id"],
        model_name=name,
        tracking_uri=tracking.tracking_uri(run.tracking),
    )
    _publish(summary)
    return summary


@flow(name="evaluate-checkpoint")
def evaluate_all(store: str, dataset: str, checkpoint: str, evaluation: EvaluationPlan) -> list[dict[str, Any]]:
    """Every (mode, protocol) of ``evaluation``, fanned out on the task runner; rows in plan order."""
    futures = [
        evaluate_checkpoint.submit(store, dataset, checkpoint, mode, protocol, evaluation.episodes, evaluation.seeds)
        for protocol in evaluation.protocols
        for mode in evaluation.modes
    ]
    return [future.result() for future in futures]


def task_runner(scale: ScaleConfig):
    """Threads by default; a local Dask cluster (prefect-dask) with ``scale.dask_workers`` processes on request."""
    if scale.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": scale.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return ThreadPoolTaskRunner()


def _record_and_register(
    client,
    run: RunConfig,
    ingest: dict,
    trained: dict,
    evaluations: list[dict],
    gate: tracking.Gate,
    baselines: list[dict],
) -> dict[str, Any]:
    """Log the run to MLflow (params, per-step metrics, evaluation table, plots, GX summary, config), log the
    checkpoint as a pyfunc model and register it through the promotion gate. When the server stops answering, the run
    fails with one line naming it; the checkpoint stays for the next run with the same inputs."""
    kept = (
        f"the checkpoint {trained['checkpoint']} is kept: once the server is back, the next run with the same "
        "inputs registers it without training again"
    )
    with tracking.server_answering(client, run.tracking, kept):
        experiment = tracking.experiment_id(client, run.dataset, run.tracking)
        run_id = tracking.record_run(
            client,
            experiment,
            run_name=flow_run.get_name() or "local",
            run=run,
            ingest=ingest,
            trained=trained,
            evaluations=evaluations,
            figures={
                "plots/learning_curve.png": reporting.learning_curve(trained["history"]),
                "plots/r_cumu_by_mode.png": reporting.returns_by_mode(evaluations),
                "plots/chosen_history_lengths.png": reporting.history_lengths(evaluations),
            },
            baselines=baselines,
        )
        model_uri = tracking.log_model(run_id, Path(trained["checkpoint"]))
        tags = {
            "dataset": run.dataset,
            "trajectory_version": ingest["trajectory_version"],
            "profile": str(run.profile),
            "mlflow_run_id": run_id,
            "checkpoint": trained["checkpoint"],
        }

        def score_of(champion) -> float | None:
            with tempfile.TemporaryDirectory() as folder:
                local = tracking.download_model(champion, Path(folder))
                evaluation = run.evaluation
                return champion_score(
                    run.store,
                    run.dataset,
                    str(local / "artifacts" / "checkpoint"),
                    evaluation.gate.mode,
                    evaluation.gate.protocol,
                    evaluation.episodes,
                    evaluation.seeds,
                )

        registration = tracking.register(client, run.tracking.model_name, model_uri, gate, tags, score_of)
        client.set_tag(run_id, "registered_version", str(registration["version"]))
    return {"run_id": run_id, "registration": registration}


record_and_register = as_task(_record_and_register, "record-and-register")


def _trained(run: RunConfig, trajectory_version: str, registered: list) -> dict[str, Any]:
    """The last finished training with the same inputs when no ``registered`` version carries its checkpoint (its
    registration failed); otherwise a new training, remembered by its inputs."""
    runs = RUNS_DIR / run.dataset
    checkpoints = {v.tags["checkpoint"] for v in registered if "checkpoint" in v.tags}
    finished = training.reusable_training(runs, run, trajectory_version, checkpoints)
    if finished is not None:
        print(f"reusing {finished['checkpoint']}: a finished training with the same inputs, not registered yet")
        return {**finished, "reused": True}
    out = runs / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{flow_run.get_name() or 'local'}"
    trained = train_model(run, out)
    training.remember_training(runs, run, trained)
    return trained


def _ingest_view(ingest: dict[str, Any]) -> dict[str, Any]:
    keys = ("files_ingested", "files_skipped", "rows_read", "rows_accepted", "rows_quarantined", "trajectory_version")
    return {key: ingest[key] for key in keys}


def _publish(summary: dict[str, Any]) -> None:
    """A markdown summary and a metrics table for the Prefect UI."""
    key = "train-mdt4rec-" + "".join(c if c.isalnum() else "-" for c in summary["dataset"].lower())
    create_markdown_artifact(markdown=reporting.summary_markdown(summary), key=key, description="Run summary")
    if summary.get("evaluation"):
        create_table_artifact(table=summary["evaluation"], key=f"{key}-metrics", description="Evaluation metrics")
