"""MLflow: one experiment per dataset, a run per training, the model registered as ``mdt4rec`` with a promotion gate.

A training's run is created before it trains (``start_run``: tags naming the code and the Prefect flow run, every
setting as a parameter, the trajectory set as its dataset input, the GX summary and Data Docs), receives the losses
while it trains (``log_metrics``), then its results (``log_results``); a run whose block fails ends FAILED
(``marks_failed``). Each registered version's description is its model card (``ModelCard``).

The alias ``champion`` moves to a new version only when its R_cumu is above the upper 95 % bound of every gate
baseline (random, popularity) and above the current champion's, on the same environment, mode, protocol, episodes
and seeds (the gate key); otherwise the version is tagged ``challenger``.
Every alias move is recorded on the registered model (tag ``champion_history``) so that ``rollback`` can undo it.
A request that gets no answer is retried with exponential back-off (``tracking.retries``, ``backoff_seconds``,
``timeout_seconds``); a call that still fails while the server does not answer is one line naming the server.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import re
import subprocess
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType, Array
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_RUN_NOTE

from mdt4rec_core.config import RunConfig, TrackingConfig
from mdt4rec_core.errors import InputError

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
TRAINING_SUMMARY = (  # figures of a training's summary logged as train_<name>
    "trainable_params",
    "total_params",
    "seconds",
    "windows_per_second",
    "popularity_action_ce",
    "uniform_action_ce",
)
EXPERIMENT_DESCRIPTION = (
    "Training runs of the train-mdt4rec flow on {dataset}: each run's tags name its code (git commit), its Prefect "
    "flow run, profile and dataset; its parameters are the whole run configuration; its dataset input is the "
    "trajectory set it trained on; its metrics are the training and validation losses by step, then R_cumu, Length "
    "and R_avg per mode and protocol with the gate's baselines beside the model's."
)
MODEL_DESCRIPTION = (
    "MDT4Rec: a Decision Transformer recommender that stitches trajectories by searching for the history length "
    "with the highest in-support return, served by `mlflow models serve` (its requests and answers are each "
    "version's signature). The alias `champion` is the version that passed the promotion gate "
    "(R_cumu above every baseline's upper 95 % bound and above the previous champion's); other versions carry the "
    "tag role=challenger. Each version's description is its model card."
)
MODEL_CODE = Path(__file__).with_name("serving_model.py")
MODEL_PACKAGE = Path(__file__).resolve().parent.parent / "mdt4rec_core"
"""The code the served model imports besides MODEL_CODE (it imports nothing from ``tasks``)."""
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(Array(DataType.string), "history"),
            ColSpec(AnyType(), "feedback", required=False),  # per row; the model checks it and names the row
        ]
    ),
    outputs=Schema([ColSpec(Array(DataType.string), "items"), ColSpec(DataType.long, "chosen_history_length")]),
    params=ParamSchema([ParamSpec("k", DataType.long, 10)]),
)


class TrackingUnavailable(InputError):
    """The tracking server cannot be reached: nothing was registered."""


def tracking_uri(config: TrackingConfig) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI (a relative sqlite path is taken from the working directory)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def _request_settings(config: TrackingConfig) -> dict[str, str]:
    """MLflow's HTTP client settings (its environment variables) for ``config``'s retries, back-off and timeout."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(config.retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(config.backoff_seconds),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(config.timeout_seconds),
    }


@contextlib.contextmanager
def _no_retries() -> Iterator[None]:
    """Fail fast while checking the server: no retries with back-off, a short timeout."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def _unanswered(client: MlflowClient) -> str | None:
    """Why the server does not answer a cheap request at once (connection refused, DNS, HTTP error); None if it does."""
    with _no_retries():
        try:
            client.search_experiments(max_results=1)
        except Exception as error:  # every failure means "not usable"
            return failure_reason(error)
    return None


def failure_reason(error: Exception) -> str:
    """The cause of a failed request in a few words: the socket error ("Connection refused") or a timeout when the
    client's message holds one, else the message's first line."""
    text = str(error).strip()
    cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)|(Read timed out)", text)
    if cause:
        return (cause.group(1) or cause.group(2)).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def connect(config: TrackingConfig) -> MlflowClient:
    """A client for the tracking and registry URI, checked to answer (TrackingUnavailable otherwise); MLflow's later
    requests in this process retry and time out as ``config`` says."""
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    reason = _unanswered(client)
    if reason is not None:
        raise TrackingUnavailable(f"MLflow at {uri} cannot be reached ({reason}); start it or set MLFLOW_TRACKING_URI")
    os.environ.update(_request_settings(config))
    return client


@contextlib.contextmanager
def server_answering(client: MlflowClient, config: TrackingConfig, kept: str) -> Iterator[None]:
    """Run tracking and registry calls; a failure while the server does not answer (after the client's retries)
    becomes one TrackingUnavailable line naming the server and what was ``kept``. Other failures pass unchanged."""
    try:
        yield
    except Exception:
        reason = _unanswered(client)
        if reason is None:
            raise
        raise TrackingUnavailable(f"MLflow at {tracking_uri(config)} stopped answering ({reason}); {kept}") from None


def experiment_id(client: MlflowClient, dataset: str, config: TrackingConfig) -> str:
    """The experiment of ``dataset``'s training runs, with its description."""
    return named_experiment(client, f"mdt4rec-{dataset}", config, EXPERIMENT_DESCRIPTION.format(dataset=dataset))


def named_experiment(client: MlflowClient, name: str, config: TrackingConfig, description: str | None = None) -> str:
    """The experiment ``name`` (created on first use; local artifacts under ``config.artifacts``), described by
    ``description`` when one is given (the MLflow UI shows it above the experiment's runs)."""
    existing = client.get_experiment_by_name(name)
    if existing is None:
        local = not tracking_uri(config).startswith(("http://", "https://", "databricks"))
        location = (Path(config.artifacts).resolve() / name).as_uri() if local else None
        tags = {MLFLOW_RUN_NOTE: description} if description else None
        return client.create_experiment(name, artifact_location=location, tags=tags)
    if description and existing.tags.get(MLFLOW_RUN_NOTE) != description:
        client.set_experiment_tag(existing.experiment_id, MLFLOW_RUN_NOTE, description)
    return existing.experiment_id


@dataclass(frozen=True)
class Gate:
    """What the gate compares: ``key`` names environment, mode, protocol, episodes and seeds; ``score`` is R_cumu;
    ``floors`` maps each baseline to the upper bound of its R_cumu's 95 % interval on the same key."""

    key: str
    score: float
    floors: dict[str, float] = field(default_factory=dict)


def upper_bound(mean: float, half_width: float) -> float:
    """The upper end of a 95 % interval; the mean itself when the interval is undefined (a single episode)."""
    return float(mean + half_width) if math.isfinite(half_width) else float(mean)


def gate_key(environment_version: str, mode: str, protocol: str, episodes: int, seeds: int) -> str:
    return f"{environment_version}/{mode}/{protocol}/episodes={episodes}/seeds={seeds}"


def model_requirements() -> list[str]:
    """The project's pinned dependencies: what the served model's environment installs. From pyproject.toml in a
    checkout (an editable install's metadata may be older than the file); from the installed distribution's metadata
    when the project was installed from a wheel (no pyproject.toml beside it)."""
    if not PYPROJECT.is_file():
        return [r for r in importlib.metadata.requires("mdt4rec") or [] if "extra ==" not in r]
    with PYPROJECT.open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def log_model(run_id: str, checkpoint: Path) -> str:
    """Log ``checkpoint`` as the run's pyfunc model, self-contained: the model's code (serving_model.py and the
    ``mdt4rec_core`` package under ``code/``) and the project's pinned requirements travel with it, so that
    ``mlflow models serve`` runs it in an environment built from the model alone. Its model URI."""
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # The signature says what a request holds; an input example would only repeat it.
        warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(MODEL_PACKAGE)],
            signature=SIGNATURE,
            pip_requirements=model_requirements(),
        )
    return info.model_uri


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    gate: Gate,
    tags: dict[str, str],
    champion_score: Callable[[ModelVersion], float | None],
    card: ModelCard,
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name``, apply the promotion gate and describe the version by its
    model ``card`` with the gate's decision. A failure after the version was created deletes it again: no
    half-registered version is left behind."""
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
        client.set_model_version_tag(name, version, "gate_key", gate.key)
        client.set_model_version_tag(name, version, "gate_score", repr(gate.score))
        client.set_model_version_tag(name, version, "gate_floors", json.dumps(gate.floors))
        decision = _gate(client, name, version, gate, champion_score)
        client.update_model_version(name, version, description=card.markdown(decision))
    except BaseException:
        client.delete_model_version(name, version)
        raise
    return {"version": int(version), **decision}


def _gate(client, name: str, version: str, gate: Gate, champion_score) -> dict[str, Any]:
    beaten = {baseline: floor for baseline, floor in gate.floors.items() if gate.score <= floor}
    if beaten:
        client.set_model_version_tag(name, version, "role", CHALLENGER)
        reasons = ", ".join(f"{baseline}'s upper 95 % bound {floor:.4f}" for baseline, floor in beaten.items())
        return {"promoted": False, "reason": f"R_cumu {gate.score:.4f} does not beat {reasons}", "champion_score": None}
    champion = current_champion(client, name)
    if champion is None:
        promote(client, name, version)
        return {"promoted": True, "reason": "first version", "champion_score": None}
    if champion.tags.get("gate_key") == gate.key:
        theirs = float(champion.tags["gate_score"])
    else:
        theirs = champion_score(champion)
    if theirs is None:
        promote(client, name, version)
        return {"promoted": True, "reason": "champion not comparable on this environment", "champion_score": None}
    if gate.score > theirs:
        promote(client, name, version)
        return {"promoted": True, "reason": f"R_cumu {gate.score:.4f} > {theirs:.4f}", "champion_score": theirs}
    client.set_model_version_tag(name, version, "role", CHALLENGER)
    return {"promoted": False, "reason": f"R_cumu {gate.score:.4f} <= {theirs:.4f}", "champion_score": theirs}


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(client: MlflowClient, name: str, version: str | int) -> dict[str, Any]:
    """Point ``champion`` at ``version`` (by hand or by the gate), remembering the previous champion."""
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise InputError(f"registered model {name!r} has no version {version}") from None
    previous = current_champion(client, name)
    history = _history(client, name)
    if previous is not None and str(previous.version) != str(version):
        history.append(str(previous.version))
        client.set_model_version_tag(name, str(previous.version), "role", CHALLENGER)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "role", CHAMPION)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    return {"champion": int(version), "previous": int(previous.version) if previous else None}


def rollback(client: MlflowClient, name: str) -> dict[str, Any]:
    """Move ``champion`` back to the version it pointed at before its last move."""
    history = _history(client, name)
    if not history:
        raise InputError(f"registered model {name!r} has no earlier champion to roll back to")
    target = history.pop()
    current = current_champion(client, name)
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_model_version_tag(name, target, "role", CHAMPION)
    if current is not None:
        client.set_model_version_tag(name, str(current.version), "role", CHALLENGER)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    return {"champion": int(target), "previous": int(current.version) if current else None}


def _history(client: MlflowClient, name: str) -> list[str]:
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as error:
        raise InputError(f"no registered model {name!r} in {mlflow.get_tracking_uri()}") from error
    return list(json.loads(tags.get(HISTORY_TAG, "[]")))


def versions_for(client: MlflowClient, name: str, dataset: str, trajectory_version: str) -> list[ModelVersion]:
    """Registered versions trained on exactly this trajectory set of ``dataset``."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return [
        v
        for v in versions
        if v.tags.get("dataset") == dataset and v.tags.get("trajectory_version") == trajectory_version
    ]


def code_version() -> dict[str, str]:
    """Tags naming the code that runs: in a git checkout, its commit (``mlflow.source.git.commit``, which the MLflow
    UI shows) and ``git_dirty`` (``true`` when tracked or new files differ from that commit); otherwise the
    installed package's version (``mdt4rec_version``), when it is installed."""
    checkout = _checkout(Path(__file__).resolve().parent.parent)
    if checkout is not None:
        commit, dirty = checkout
        return {MLFLOW_GIT_COMMIT: commit, "git_dirty": str(dirty).lower()}
    try:
        return {"mdt4rec_version": importlib.metadata.version("mdt4rec")}
    except importlib.metadata.PackageNotFoundError:
        return {}


def _checkout(root: Path) -> tuple[str, bool] | None:
    """The commit of the git checkout whose top folder is ``root`` and whether files differ from it; None when
    ``root`` is no checkout's top (not in one, no git, or inside another project's checkout)."""
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")) != root:
            return None
        return _git(root, "rev-parse", "HEAD"), bool(_git(root, "status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return None


def _git(root: Path, *arguments: str) -> str:
    """The output of ``git -C root ARGUMENTS`` (CalledProcessError when git fails, OSError without git)."""
    command = ["git", "-C", str(root), *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


class TrajectoryDataset(MetaDataset):
    """A trajectory set as an MLflow dataset: where it lies, its version as digest, its size as profile."""

    def __init__(self, uri: str, name: str, version: str, profile: dict[str, int]) -> None:
        self._profile = profile
        with warnings.catch_warnings():  # MLflow registers two equal sources for local paths and says so
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(uri)
        super().__init__(source, name=name, digest=version)

    @property
    def profile(self) -> dict[str, int]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def trajectory_input(dataset: str, ingest: dict[str, Any]) -> DatasetInput:
    """The trajectory set ``ingest`` made current, as a training input: named ``<dataset>-trajectories``, its digest
    the trajectory version, its source the set's folder in the store, its profile the users, items, episodes and
    steps."""
    from mdt4rec_core.data.trajectories import trajectory_dir

    version = ingest["trajectory_version"]
    trajectories = TrajectoryDataset(
        f"{ingest['store']}/{trajectory_dir(dataset, version)}",
        f"{dataset}-trajectories",
        version,
        {key: int(ingest[key]) for key in ("users", "items", "episodes", "steps")},
    )
    return DatasetInput(trajectories._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])


def start_run(
    client: MlflowClient, experiment: str, run_name: str, run: RunConfig, ingest: dict[str, Any], tags: dict[str, str]
) -> str:
    """Create the MLflow run of a training before it trains, with what is known then: the tags dataset, profile, the
    code's version and ``tags``; every setting as a parameter and ``config.json``; the trajectory set as its dataset
    input; the GX summary and Data Docs of the run's validations. Returns the run's id; the run is left running."""
    run_tags = {"dataset": run.dataset, "profile": str(run.profile), **code_version(), **tags}
    run_id = client.create_run(experiment, run_name=run_name, tags=run_tags).info.run_id
    with marks_failed(client, run_id):
        params = [Param(key, value[:6000]) for key, value in run.params().items()]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
        client.log_inputs(run_id, datasets=[trajectory_input(run.dataset, ingest)])
        client.log_dict(run_id, run.model_dump(mode="json"), "config.json")
        log_validation(client, run_id, ingest["validation"])
    return run_id


def log_validation(client: MlflowClient, run_id: str, validation: dict[str, list[dict[str, Any]]]) -> None:
    """The GX results (``validation/summary.json``) and the Data Docs site they were written to
    (``validation/data_docs/``, its ``index.html`` the entry page)."""
    client.log_dict(run_id, validation, "validation/summary.json")
    for site in data_docs_sites(validation):
        client.log_artifacts(run_id, str(site), "validation/data_docs")


def data_docs_sites(validation: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """The Data Docs folders of the validation reports (each report names its site's ``index.html``)."""
    pages = {Path(report["data_docs"]) for reports in validation.values() for report in reports if report["data_docs"]}
    return sorted({page.parent for page in pages if page.is_file()})


@contextlib.contextmanager
def marks_failed(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Run the block; when it raises, end the MLflow run as FAILED (if the server still answers: the block's error
    is what the caller sees either way)."""
    try:
        yield
    except BaseException:
        with _no_retries(), contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise


def step_metrics(step: int, values: dict[str, float], seconds: float) -> list[Metric]:
    """``values`` measured at training ``step`` at ``seconds`` (Unix time) as MLflow metrics."""
    return [Metric(name, float(value), int(seconds * 1000), step) for name, value in values.items()]


def history_metrics(history: dict[str, list[list[float]]], after: int, seconds: float) -> list[Metric]:
    """A training history's points (``[step, value]`` per metric name) past step ``after``, as metrics at
    ``seconds`` (Unix time: a history does not keep when each step ran)."""
    return [
        Metric(name, float(value), int(seconds * 1000), int(step))
        for name, points in history.items()
        for step, value in points
        if step > after
    ]


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """Log ``metrics`` in batches of MLflow's largest size."""
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_results(
    client: MlflowClient,
    run_id: str,
    trained: dict[str, Any],
    evaluations: list[dict[str, Any]],
    baselines: list[dict[str, Any]],
    figures: dict[str, Any],
) -> None:
    """A training's results: R_cumu, its 95 % half-width, Length and R_avg per mode and protocol
    (``R_cumu_<mode>_<protocol>``), the gate's baselines beside the model (``R_cumu_<mode>_<protocol>_<baseline>``),
    the training's summary (``train_<name>``), the evaluation table and ``figures`` (artifact path -> figure)."""
    from tasks.reporting import evaluation_rows

    now = time.time()
    values = {f"train_{key}": trained[key] for key in TRAINING_SUMMARY if trained.get(key) is not None}
    for row, suffix in [*((e, "") for e in evaluations), *((b, f"_{b['policy']}") for b in baselines)]:
        for name in ("R_cumu", "R_cumu_ci95", "Length", "R_avg"):
            values[f"{name}_{row['mode']}_{row['protocol']}{suffix}"] = row[name]
    log_metrics(client, run_id, step_metrics(0, values, now))
    client.log_table(run_id, data=_frame(evaluation_rows(evaluations)), artifact_file="evaluation/table.json")
    client.log_dict(run_id, evaluations, "evaluation/full.json")
    for path, figure in figures.items():
        client.log_figure(run_id, figure, path)


def run_url(uri: str, experiment: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI of a tracking server (None for a local database, which has no UI address)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


@dataclass(frozen=True)
class ModelCard:
    """What a registered version says of itself: the data it learnt from, its settings, its R_cumu beside the gate's
    baselines' in the gate's mode and protocol; the gate's decision is added once it is known."""

    dataset: str
    trajectory_version: str
    episodes: int
    steps: int
    preset: str | None
    profile: str | None
    context_steps: int
    adaptation: str
    lora_r: int
    train_steps: int
    evaluated_on: str
    scores: dict[str, tuple[float, float]]  # policy -> (R_cumu, 95 % half-width); the model first

    @classmethod
    def of(
        cls,
        run: RunConfig,
        ingest: dict[str, Any],
        trained: dict[str, Any],
        gate_row: dict[str, Any],
        baselines: list[dict[str, Any]],
    ) -> ModelCard:
        """The card of the model ``trained`` by ``run`` on ``ingest``'s trajectory set, scored ``gate_row`` in the
        gate's evaluation, where the ``baselines`` scored theirs."""
        backbone = run.model.backbone
        return cls(
            dataset=run.dataset,
            trajectory_version=ingest["trajectory_version"],
            episodes=int(ingest["episodes"]),
            steps=int(ingest["steps"]),
            preset=run.preset,
            profile=run.profile,
            context_steps=run.model.context_steps,
            adaptation=backbone.adaptation,
            lora_r=backbone.lora_r,
            train_steps=int(trained["steps"]),
            evaluated_on=(
                f"{gate_row['mode']} mode, {gate_row['protocol']} protocol, {gate_row['episodes']:,} episodes over "
                f"{len(gate_row['seeds'])} seeds"
            ),
            scores={
                "model": (gate_row["R_cumu"], gate_row["R_cumu_ci95"]),
                **{row["policy"]: (row["R_cumu"], row["R_cumu_ci95"]) for row in baselines},
            },
        )

    def markdown(self, decision: dict[str, Any]) -> str:
        """The card as markdown (the version's description in the MLflow UI), ending with the gate's ``decision``."""
        lora = f", LoRA r = {self.lora_r}" if self.adaptation == "lora" else ""
        scores = "; ".join(f"{policy} {mean:.3f} ± {half:.3f}" for policy, (mean, half) in self.scores.items())
        role = CHAMPION if decision["promoted"] else CHALLENGER
        return "\n\n".join(
            [
                f"**Data**: {self.dataset}, trajectory set `{self.trajectory_version}` ({self.steps:,} steps in "
                f"{self.episodes:,} episodes)",
                f"**Settings**: preset `{self.preset}` (profile `{self.profile}`), K = {self.context_steps} steps, "
                f"adaptation {self.adaptation}{lora}, {self.train_steps:,} training steps",
                f"**R_cumu** (95 % interval; {self.evaluated_on}): {scores}",
                f"**Gate**: {role}: {decision['reason']}",
            ]
        )


def download_model(version: ModelVersion, folder: Path) -> Path:
    """The files of a registered version (MLmodel, artifacts/checkpoint/...) under ``folder``, from the registry
    ``connect`` pointed MLflow at."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(folder)))


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(rows)
