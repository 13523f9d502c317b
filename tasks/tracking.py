"""MLflow: one experiment per dataset, a run per training, the model registered as ``mdt4rec`` with a promotion gate.

The alias ``champion`` moves to a new version only when its R_cumu is above the upper 95 % bound of every gate
baseline (random, popularity) and above the current champion's, on the same environment, mode, protocol, episodes
and seeds (the gate key); otherwise the version is tagged ``challenger``.
Every alias move is recorded on the registered model (tag ``champion_history``) so that ``rollback`` can undo it.
A request that gets no answer is retried with exponential back-off (``tracking.retries``, ``backoff_seconds``,
``timeout_seconds``); a call that still fails while the server does not answer is one line naming the server.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType, Array

from mdt4rec_core.config import RunConfig, TrackingConfig
from mdt4rec_core.errors import InputError

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
MODEL_CODE = Path(__file__).with_name("serving_model.py")
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
            return _reason(error)
    return None


def _reason(error: Exception) -> str:
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
    """The experiment of ``dataset``'s training runs."""
    return named_experiment(client, f"mdt4rec-{dataset}", config)


def named_experiment(client: MlflowClient, name: str, config: TrackingConfig) -> str:
    """The experiment ``name`` (created on first use; local artifacts under ``config.artifacts``)."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    local = not tracking_uri(config).startswith(("http://", "https://", "databricks"))
    location = (Path(config.artifacts).resolve() / name).as_uri() if local else None
    return client.create_experiment(name, artifact_location=location)


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


def log_model(run_id: str, checkpoint: Path) -> str:
    """Log ``checkpoint`` as the run's pyfunc model; its model URI."""
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            signature=SIGNATURE,
            pip_requirements=[],  # served with --env-manager local, in the project's environment
        )
    return info.model_uri


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    gate: Gate,
    tags: dict[str, str],
    champion_score: Callable[[ModelVersion], float | None],
) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name`` and apply the promotion gate. A failure after the version
    was created deletes it again: no half-registered version is left behind."""
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        client.set_model_version_tag(name, version, "gate_key", gate.key)
        client.set_model_version_tag(name, version, "gate_score", repr(gate.score))
        client.set_model_version_tag(name, version, "gate_floors", json.dumps(gate.floors))
        decision = _gate(client, name, version, gate, champion_score)
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


def record_run(
    client: MlflowClient,
    experiment: str,
    run_name: str,
    run: RunConfig,
    ingest: dict[str, Any],
    trained: dict[str, Any],
    evaluations: list[dict[str, Any]],
    figures: dict[str, Any],
    baselines: list[dict[str, Any]] = (),
) -> str:
    """One MLflow run: parameters, per-step losses, evaluation metrics and table (the gate's baselines beside the
    model: ``R_cumu_<mode>_<protocol>_<baseline>``), plots, the GX summary, the config. Returns the run id (the run
    is left finished)."""
    from mlflow.entities import Metric, Param

    from tasks.reporting import evaluation_rows

    created = client.create_run(
        experiment, run_name=run_name, tags={"dataset": run.dataset, "profile": str(run.profile)}
    )
    run_id = created.info.run_id
    try:
        config = run.model_dump(mode="json")
        params = [Param(key, value[:6000]) for key, value in run.params().items()]
        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, int(step))
            for name, key in (
                ("train_loss", "train_loss"),
                ("validation_loss", "validation_loss"),
                ("validation_action_ce", "validation_action_ce"),
            )
            for step, value in trained["history"].get(key, [])
        ]
        for row in [*evaluations, *baselines]:
            suffix = f"{row['mode']}_{row['protocol']}" + (f"_{row['policy']}" if row in baselines else "")
            metrics += [Metric(f"{name}_{suffix}", float(row[name]), now, 0) for name in ("R_cumu", "Length", "R_avg")]
            metrics.append(Metric(f"R_cumu_ci95_{suffix}", float(row["R_cumu_ci95"]), now, 0))
        summary = {
            k: trained.get(k)
            for k in (
                "trainable_params",
                "total_params",
                "seconds",
                "windows_per_second",
                "popularity_action_ce",
                "uniform_action_ce",
            )
        }
        metrics += [Metric(f"train_{k}", float(v), now, 0) for k, v in summary.items() if v is not None]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start : start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.log_table(run_id, data=_frame(evaluation_rows(evaluations)), artifact_file="evaluation/table.json")
        client.log_dict(run_id, evaluations, "evaluation/full.json")
        for path, figure in figures.items():
            client.log_figure(run_id, figure, path)
        client.log_dict(run_id, config, "config.json")
        client.log_dict(run_id, ingest["validation"], "validation/summary.json")
        docs = {report["data_docs"] for checks in ingest["validation"].values() for report in checks}
        for folder in sorted(d for d in docs if d and Path(d).is_dir()):
            client.log_artifacts(run_id, folder, "validation/data_docs")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def download_model(version: ModelVersion, folder: Path) -> Path:
    """The files of a registered version (MLmodel, artifacts/checkpoint/...) under ``folder``, from the registry
    ``connect`` pointed MLflow at."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(folder)))


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(rows)
