"""Flow ``train-mdt4rec``: new logs -> validated store -> trajectories -> simulators -> train -> evaluate -> register.

Deployed per dataset (``mdt4rec deploy``, or prefect.yaml for ml-1m): ``train-mdt4rec/nightly`` for ml-1m,
``train-mdt4rec/nightly-<dataset>`` for any other. Each run ingests what arrived in the landing folder; a run with
nothing new says so and trains nothing unless ``force``. The MLflow run is created before training, receives the
losses while the model trains and its results after; the model is registered and the alias ``champion`` moves only
when the new version beats the champion (tasks/tracking.py). Every step is a task run named by its arguments, with
its timeout (``deployment.timeouts``), and logs its figures to the flow run's log.

Training is not repeated after a late failure: every finished training is remembered by its inputs (dataset, store,
trajectory set, network and training settings, processes; runs/<dataset>/by-inputs/). A run whose inputs match a
finished training that no registered version carries (its registration failed, e.g. the tracking server went
away) takes that checkpoint instead of training; once a version carries it, a run with the same inputs
(``force``) trains anew.
"""

import dataclasses
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from prefect.utilities.urls import url_for
from pydantic import BaseModel, ConfigDict, Field

from mdt4rec_core.config import EvaluationPlan, Profile, RunConfig, ScaleConfig, load_run_config
from mdt4rec_core.envs.api import build_env
from tasks import reporting, tracking, training
from tasks.deployment import exit_with_parent
from tasks.ingest import IngestSteps, dataset_to_ingest, run_ingest, task_steps
from tasks.prefect_task import as_task, run_logger

INGEST_TASKS = task_steps()

RUNS_DIR = Path("runs")
PREFECT_FLOW_RUN_TAG = "prefect_flow_run_id"
PREFECT_FLOW_RUN_URL_TAG = "prefect_flow_run_url"


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


@dataclasses.dataclass(frozen=True)
class Evaluated:
    """The new checkpoint's evaluations, the gate's baselines and what the gate compares (``gate_row``: the
    evaluation in the gate's mode and protocol)."""

    rows: list[dict[str, Any]]
    baselines: list[dict[str, Any]]
    gate_row: dict[str, Any]
    gate: tracking.Gate


connect_tracking = as_task(tracking.connect, "connect-tracking")
prepare_environment = as_task(build_env, "prepare-environment", task_run_name="prepare-environment-{protocol}")
train_model = as_task(training.train_model, "train")
evaluate_checkpoint = as_task(training.evaluate_checkpoint, "evaluate", task_run_name="evaluate-{mode}-{protocol}")
champion_score = as_task(training.champion_score, "evaluate-champion")
evaluate_baseline = as_task(
    training.evaluate_baseline, "evaluate-baseline", task_run_name="evaluate-baseline-{policy}-{mode}-{protocol}"
)


@flow(name="train-mdt4rec", log_prints=True)
def train_mdt4rec(
    profile: Profile = "cpu", dataset: str = "ml-1m", overrides: list[str] | None = None, force: bool = False
) -> dict[str, Any]:
    """Ingest, validate, train, evaluate and register MDT4Rec on ``dataset`` with the ``profile`` run
    configuration."""
    exit_with_parent()
    request = TrainRequest(profile=profile, dataset=dataset, overrides=overrides, force=force)
    run = load_run_config(request.profile, request.dataset, request.overrides or [])
    timeouts = run.deployment.timeouts
    client = connect_tracking.with_options(
        retries=run.tracking.retries,
        retry_delay_seconds=exponential_backoff(run.tracking.backoff_seconds),
        timeout_seconds=timeouts.connect_tracking,
    )(run.tracking)
    source = dataset_to_ingest(run)
    ingest = run_ingest(run, source, _with_timeout(INGEST_TASKS, timeouts.ingest))
    run_logger().info(_ingest_line(ingest))
    summary: dict[str, Any] = {"dataset": run.dataset, "profile": run.profile, "ingest": _ingest_view(ingest)}
    name = run.tracking.model_name
    trained_before = tracking.versions_for(client, name, run.dataset, ingest["trajectory_version"])
    if ingest["files_ingested"] == 0 and trained_before and not request.force:
        versions = ", ".join(str(v.version) for v in trained_before)
        summary["skipped"] = (
            f"no new data: trajectory set {ingest['trajectory_version']} was already trained on "
            f"(version {versions}); run with force=true to train again"
        )
        run_logger().info(summary["skipped"])
        _publish(summary)
        return summary

    environments = {
        protocol: prepare_environment.with_options(timeout_seconds=timeouts.prepare_environment)(
            run.store, run.dataset, protocol
        )
        for protocol in run.evaluation.protocols
    }
    started = start_tracking_run.with_options(timeout_seconds=timeouts.tracking)(client, run, ingest)
    with tracking.marks_failed(client, started["run_id"]):
        progress = training.TrainingProgress(client, started["run_id"], run.deployment.progress_every_steps)
        trained = _trained(run, ingest["trajectory_version"], trained_before, progress)
        evaluated = _evaluate(run, trained["checkpoint"], environments)
        registered = record_and_register.with_options(timeout_seconds=timeouts.tracking + timeouts.evaluate)(
            client, started["run_id"], run, ingest, trained, progress.sent_through, evaluated
        )
    run_logger().info(_gate_line(name, registered["registration"], evaluated.gate))
    summary.update(
        training={k: v for k, v in trained.items() if k != "history"},
        evaluation=reporting.evaluation_rows(evaluated.rows),
        baselines=reporting.baseline_rows(evaluated.baselines),
        registration=registered["registration"],
        mlflow_run_id=started["run_id"],
        mlflow_run_url=started["url"],
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


def _with_timeout(steps: IngestSteps, seconds: int) -> IngestSteps:
    """The ingest ``steps`` (Prefect tasks), each failing after ``seconds``."""
    return IngestSteps(
        **{f.name: getattr(steps, f.name).with_options(timeout_seconds=seconds) for f in dataclasses.fields(steps)}
    )


def _start_tracking_run(client, run: RunConfig, ingest: dict[str, Any]) -> dict[str, str | None]:
    """The MLflow run of this training, created before it trains (tagged with this flow run); its id and its page
    in the MLflow UI (None without a tracking server)."""
    with tracking.server_answering(client, run.tracking, "nothing was trained or registered"):
        experiment = tracking.experiment_id(client, run.dataset, run.tracking)
        name = flow_run.get_name() or "local"
        run_id = tracking.start_run(client, experiment, name, run, ingest, _flow_run_tags())
    return {"run_id": run_id, "url": tracking.run_url(tracking.tracking_uri(run.tracking), experiment, run_id)}


start_tracking_run = as_task(_start_tracking_run, "start-tracking-run")


def _flow_run_tags() -> dict[str, str]:
    """The Prefect flow run an MLflow run belongs to: its id, and its page in the Prefect UI when the API's address
    is known (not in Prefect's ephemeral mode)."""
    if flow_run.id is None:
        return {}
    url = url_for("flow-run", obj_id=flow_run.id)
    return {PREFECT_FLOW_RUN_TAG: flow_run.id, **({PREFECT_FLOW_RUN_URL_TAG: url} if url else {})}


def _evaluate(run: RunConfig, checkpoint: str, environments: dict[str, dict[str, Any]]) -> Evaluated:
    """Every evaluation of ``checkpoint`` (a subflow), the gate's baselines in the gate's mode and protocol, and the
    gate that compares them."""
    evaluation, timeout = run.evaluation, run.deployment.timeouts.evaluate
    rows = evaluate_all.with_options(task_runner=task_runner(run.scale), timeout_seconds=timeout)(
        run.store, run.dataset, checkpoint, evaluation
    )
    mode, protocol = evaluation.gate.mode, evaluation.gate.protocol
    gate_row = next(row for row in rows if (row["mode"], row["protocol"]) == (mode, protocol))
    baselines = [
        evaluate_baseline.with_options(timeout_seconds=timeout)(
            run.store, run.dataset, baseline, mode, evaluation.episodes, evaluation.seeds, protocol
        )
        for baseline in evaluation.gate.baselines
    ]
    gate = tracking.Gate(
        tracking.gate_key(environments[protocol]["version"], mode, protocol, evaluation.episodes, evaluation.seeds),
        float(gate_row["R_cumu"]),
        {row["policy"]: tracking.upper_bound(row["R_cumu"], row["R_cumu_ci95"]) for row in baselines},
    )
    return Evaluated(rows, baselines, gate_row, gate)


def _record_and_register(
    client, run_id: str, run: RunConfig, ingest: dict, trained: dict, sent_through: int, evaluated: Evaluated
) -> dict[str, Any]:
    """Complete the MLflow run (the losses it did not receive while training, i.e. after step ``sent_through``;
    evaluation metrics with the gate's baselines, table, plots), log the checkpoint as a pyfunc model, register it
    through the promotion gate with its model card, and end the run FINISHED. When the server stops answering, the
    run fails with one line naming it; the checkpoint stays for the next run with the same inputs."""
    kept = (
        f"the checkpoint {trained['checkpoint']} is kept: once the server is back, the next run with the same "
        "inputs registers it without training again"
    )
    with tracking.server_answering(client, run.tracking, kept):
        tracking.log_metrics(client, run_id, tracking.history_metrics(trained["history"], sent_through, time.time()))
        tracking.log_results(
            client,
            run_id,
            trained,
            evaluated.rows,
            evaluated.baselines,
            figures={
                "plots/learning_curve.png": reporting.learning_curve(trained["history"]),
                "plots/r_cumu_by_mode.png": reporting.returns_by_mode(evaluated.rows),
                "plots/chosen_history_lengths.png": reporting.history_lengths(evaluated.rows),
            },
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
                return champion_score.with_options(timeout_seconds=run.deployment.timeouts.evaluate)(
                    run.store,
                    run.dataset,
                    str(local / "artifacts" / "checkpoint"),
                    evaluation.gate.mode,
                    evaluation.gate.protocol,
                    evaluation.episodes,
                    evaluation.seeds,
                )

        card = tracking.ModelCard.of(run, ingest, trained, evaluated.gate_row, evaluated.baselines)
        registration = tracking.register(
            client, run.tracking.model_name, model_uri, evaluated.gate, tags, score_of, card
        )
        client.set_tag(run_id, "registered_version", str(registration["version"]))
        client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "registration": registration}


record_and_register = as_task(_record_and_register, "record-and-register")


def _trained(
    run: RunConfig, trajectory_version: str, registered: list, progress: training.TrainingProgress
) -> dict[str, Any]:
    """The last finished training with the same inputs when no ``registered`` version carries its checkpoint (its
    registration failed); otherwise a new training, reporting its ``progress``, remembered by its inputs."""
    runs = RUNS_DIR / run.dataset
    checkpoints = {v.tags["checkpoint"] for v in registered if "checkpoint" in v.tags}
    finished = training.reusable_training(runs, run, trajectory_version, checkpoints)
    if finished is not None:
        run_logger().info(
            f"reusing {finished['checkpoint']}: a finished training with the same inputs, not registered yet"
        )
        return {**finished, "reused": True}
    out = runs / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{flow_run.get_name() or 'local'}"
    trained = train_model.with_options(timeout_seconds=run.deployment.timeouts.train)(run, out, progress)
    training.remember_training(runs, run, trained)
    return trained


def _ingest_line(ingest: dict[str, Any]) -> str:
    """What the ingest read, accepted and quarantined, and the trajectory set it left current."""
    return (
        f"ingested {ingest['files_ingested']} new file(s) ({ingest['files_skipped']} already ingested): "
        f"{ingest['rows_read']:,} rows read, {ingest['rows_accepted']:,} accepted, {ingest['rows_quarantined']:,} "
        f"quarantined; trajectory set {ingest['trajectory_version']}: {ingest['episodes']:,} episodes, "
        f"{ingest['steps']:,} steps"
    )


def _gate_line(name: str, registration: dict[str, Any], gate: tracking.Gate) -> str:
    """The gate's decision with the numbers it compared."""
    role = "champion" if registration["promoted"] else "challenger"
    floors = ", ".join(f"{baseline} {floor:.3f}" for baseline, floor in gate.floors.items()) or "none"
    champion = registration["champion_score"]
    return (
        f"gate decision: {name} version {registration['version']} is {role} ({registration['reason']}): R_cumu "
        f"{gate.score:.3f} on {gate.key}; baselines' upper 95 % bounds: {floors}; champion's R_cumu: "
        f"{'none' if champion is None else f'{champion:.3f}'}"
    )


def _ingest_view(ingest: dict[str, Any]) -> dict[str, Any]:
    keys = ("files_ingested", "files_skipped", "rows_read", "rows_accepted", "rows_quarantined", "trajectory_version")
    return {key: ingest[key] for key in keys}


def _publish(summary: dict[str, Any]) -> None:
    """A markdown summary, a metrics table (figures rounded) and a link to the MLflow run for the Prefect UI."""
    key = "train-mdt4rec-" + "".join(c if c.isalnum() else "-" for c in summary["dataset"].lower())
    create_markdown_artifact(markdown=reporting.summary_markdown(summary), key=key, description="Run summary")
    if summary.get("evaluation"):
        create_table_artifact(
            table=reporting.metrics_table(summary), key=f"{key}-metrics", description="Evaluation metrics"
        )
    if summary.get("mlflow_run_url"):
        create_link_artifact(
            link=summary["mlflow_run_url"], link_text=f"MLflow run {summary['mlflow_run_id']}", key=f"{key}-mlflow-run"
        )
