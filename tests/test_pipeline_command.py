"""The README run command's path: `mdt4rec pipeline` with no server at all (Prefect's ephemeral API, MLflow on a
sqlite file in the working folder), run twice: the second run finds nothing new and trains nothing. The first run
also sets one key of each kind on the command line, and each must reach the trajectory set, training, the
checkpoint, inference and the MLflow run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mdt4rec_core.config import load_run_config
from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy
from mdt4rec_core.model.checkpoint import load_checkpoint, read_run_config

BIN = Path(sys.executable).parent
SMALL = ["train.max_steps=3", "evaluation.episodes=5", "evaluation.seeds=1"]
CHANGED = {  # one hyper-parameter of each part of the run configuration, away from its default
    "model.backbone.lora_r": 4,
    "model.context_steps": 5,
    "trajectories.state_length": 6,
    "search.kappa": 4.0,
}
OVERRIDES = [*SMALL, *(f"{key}={value}" for key, value in CHANGED.items())]


def _pipeline(work: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    command = [str(BIN / "mdt4rec"), "pipeline", "--profile", "smoke", "-d", "ml-100k", "--json"]
    command += [part for assignment in OVERRIDES for part in ("--set", assignment)]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("pipeline")
    return work, _pipeline(work)


@pytest.fixture(scope="module")
def registered(first):
    """The first run's summary, its MLflow run and its checkpoint (loaded)."""
    work, result = first
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_run(summary["mlflow_run_id"])
    checkpoint = Path(summary["training"]["checkpoint"])
    if not checkpoint.is_absolute():
        checkpoint = work / checkpoint
    return summary, run, checkpoint


def test_the_embedded_pipeline_trains_registers_and_then_skips(first, registered):
    work, result = first
    summary, _, _ = registered
    assert summary["registration"]["version"] == 1 and summary["registration"]["promoted"]
    assert summary["tracking_uri"] == f"sqlite:///{work / 'mlflow.db'}"
    assert (work / "mlartifacts" / "mdt4rec-ml-100k").is_dir() and (work / "store").is_dir()
    assert f"mlflow ui --backend-store-uri sqlite:///{work / 'mlflow.db'}" in result.stderr

    second = _pipeline(work)
    assert second.returncode == 0, second.stderr[-3000:]
    skipped = json.loads(second.stdout.strip().splitlines()[-1])
    assert skipped["skipped"].startswith("no new data") and "version 1" in skipped["skipped"]
    assert "training" not in skipped


def test_every_setting_of_the_run_is_an_mlflow_param_under_its_own_name(registered):
    _, run, checkpoint = registered
    resolved = load_run_config("smoke", "ml-100k", OVERRIDES)
    assert run.data.params == resolved.params()  # every key, the same names and values
    assert read_run_config(checkpoint) == resolved  # the checkpoint keeps the same RunConfig


def _lora_ranks(model) -> set[int]:
    return {module.r["default"] for module in model.backbone.modules() if hasattr(module, "lora_A")}


def test_the_lora_rank_reaches_training_the_checkpoint_and_mlflow(registered):
    _, run, checkpoint = registered
    model, _, _ = load_checkpoint(checkpoint)
    assert model.config.backbone.lora_r == 4 and _lora_ranks(model) == {4}
    assert run.data.params["model.backbone.lora_r"] == "4"


def test_the_context_length_reaches_training_inference_and_mlflow(registered):
    summary, run, checkpoint = registered
    model, _, _ = load_checkpoint(checkpoint)
    assert model.config.context_steps == 5
    assert summary["training"]["tokens_per_second"] == pytest.approx(3 * 5 * summary["training"]["windows_per_second"])
    assert run.data.params["model.context_steps"] == "5"


def test_the_state_length_reaches_the_trajectory_set_the_network_and_mlflow(first, registered):
    from mdt4rec_core.data.store import Store
    from mdt4rec_core.data.trajectories import load_trajectories

    work, _ = first
    _, run, checkpoint = registered
    trajectories = load_trajectories(Store(str(work / "store")), "ml-100k")
    assert trajectories.steps["state_items"].list.len().max() == 6
    model, _, _ = load_checkpoint(checkpoint)
    assert model.shape.state_length == 6  # measured from that trajectory set
    assert run.data.params["trajectories.state_length"] == "6"


def test_kappa_reaches_the_checkpoint_inference_and_mlflow(registered):
    _, run, checkpoint = registered
    _, catalogue, _ = load_checkpoint(checkpoint)
    assert CheckpointPolicy(checkpoint, catalogue).config.kappa == 4.0  # the search the evaluation used
    assert run.data.params["search.kappa"] == "4.0"
