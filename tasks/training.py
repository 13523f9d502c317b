"""Training and evaluation steps of the ``train-mdt4rec`` flow, as plain functions (the flow wraps them as tasks).

A finished training is remembered by its inputs (dataset, store, trajectory set, the settings of the network, its
training and its trajectories, processes) in
``<runs>/by-inputs/<key>.json``, so that a later run with the same inputs can take its checkpoint instead of
training again. While it trains, ``TrainingProgress`` sends its losses to the MLflow run and reports them in the
run's log; each evaluation's R_cumu is reported there too.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric

from mdt4rec_core.config import RunConfig
from mdt4rec_core.envs.api import evaluate_policy
from mdt4rec_core.errors import InputError
from mdt4rec_core.train import StepReport, train_on_store
from tasks import tracking
from tasks.prefect_task import run_logger

RUN_CONFIG_FILE = "run_config.json"


def train_model(run: RunConfig, out: Path, progress: Callable[[StepReport], None] | None = None) -> dict[str, Any]:
    """Train on the current trajectory set, ``progress`` receiving a report after each step; with
    ``scale.train_processes`` > 1, under torchrun (DDP, gloo on CPU), every rank reading ``run`` from
    ``out/run_config.json`` (the losses then arrive with the summary's ``history`` only)."""
    if run.scale.train_processes == 1:
        return train_on_store(run, out, progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG_FILE).write_text(run.model_dump_json(indent=1), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={run.scale.train_processes}",
        "-m",
        "mdt4rec_core.train",
        "--config",
        str(out / RUN_CONFIG_FILE),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    refusals = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.returncode != 0 and refusals:
        raise InputError(refusals[0])  # bad input (every rank says the same): one line, as in a single process
    if result.returncode != 0:
        raise RuntimeError(f"torchrun training failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class TrainingProgress:
    """A training's progress, as it trains, for its MLflow run and the Prefect run's log: every step's losses reach
    the MLflow run with their step and time, sent every ``every`` steps, after each validation and at the last
    step; at those steps a line with the loss and windows/s (and the validation losses) goes to the log. A tracking
    server that stops answering does not stop the training: the losses it did not take (after ``sent_through``)
    are logged with the run's results."""

    def __init__(self, client: MlflowClient, run_id: str, every: int) -> None:
        self.client, self.run_id, self.every = client, run_id, every
        self.sent_through = 0  # the last step whose losses the MLflow run holds
        self._pending: list[Metric] = []
        self._sending = True

    def __call__(self, report: StepReport) -> None:
        self._pending += tracking.step_metrics(report.step, report.metrics, report.time)
        validated = "validation_loss" in report.metrics
        if validated or report.step % self.every == 0 or report.step == report.max_steps:
            run_logger().info(_progress_line(report))
            self._send(report.step)

    def _send(self, step: int) -> None:
        """Send the pending losses; the first failure stops sending for the rest of the training."""
        if not self._sending:
            return
        try:
            tracking.log_metrics(self.client, self.run_id, self._pending)
        except Exception as error:  # whatever the client raises: training goes on, the losses are kept
            self._sending = False
            run_logger().warning(
                f"MLflow did not take the losses up to step {step} ({tracking.failure_reason(error)}): training goes "
                "on, and they are logged with the run's results"
            )
            return
        self._pending, self.sent_through = [], step


def _progress_line(report: StepReport) -> str:
    """``step 100/3,000: loss 5.1234, 42.0 windows/s`` plus the validation losses when the step validated."""
    metrics = report.metrics
    line = (
        f"step {report.step:,}/{report.max_steps:,}: loss {metrics['train_loss']:.4f}, "
        f"{report.windows_per_second:.1f} windows/s"
    )
    if "validation_loss" in metrics:
        line += (
            f"; validation loss {metrics['validation_loss']:.4f}, held-out action cross-entropy "
            f"{metrics['validation_action_ce']:.3f} nats"
        )
    return line


def training_inputs(run: RunConfig, trajectory_version: str) -> dict[str, Any]:
    """Everything a training's result depends on: the data (store, dataset, trajectory set), the settings of the
    network and of its training (seed included) and the number of training processes."""
    return {
        "store": run.store,
        "dataset": run.dataset,
        "trajectory_version": trajectory_version,
        **run.model_dump(mode="json", include={"model", "train"}),
        "train_processes": run.scale.train_processes,
    }


def training_key(inputs: dict[str, Any]) -> str:
    """A short stable hash of ``inputs``: equal inputs, equal key; any change, another key."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def _entry(runs: Path, inputs: dict[str, Any]) -> Path:
    """Where the finished training with ``inputs`` is recorded."""
    return runs / "by-inputs" / f"{training_key(inputs)}.json"


def reusable_training(
    runs: Path, run: RunConfig, trajectory_version: str, registered: set[str]
) -> dict[str, Any] | None:
    """The summary of the last finished training with these inputs when its checkpoint is still on disk and is not
    among the ``registered`` checkpoints (its registration failed); else None."""
    entry = _entry(runs, training_inputs(run, trajectory_version))
    try:
        trained = json.loads(entry.read_text())["trained"]
    except (OSError, ValueError, KeyError):  # none yet, or unreadable: train anew (and replace it)
        return None
    checkpoint = trained["checkpoint"]
    return trained if Path(checkpoint).is_dir() and checkpoint not in registered else None


def remember_training(runs: Path, run: RunConfig, trained: dict[str, Any]) -> None:
    """Record the finished training ``trained`` (its summary) under the key of its inputs, replacing any earlier one."""
    inputs = training_inputs(run, trained["trajectory_version"])
    entry = _entry(runs, inputs)
    entry.parent.mkdir(parents=True, exist_ok=True)
    partial = entry.with_name(f".{entry.name}.tmp")
    partial.write_text(json.dumps({"inputs": inputs, "trained": trained}))
    partial.replace(entry)


def evaluate_checkpoint(
    store_uri: str, dataset: str, checkpoint: str, mode: str, protocol: str, episodes: int, seeds: int
) -> dict[str, Any]:
    """R_cumu, Length, R_avg (with intervals) and the chosen-history-length histogram of a checkpoint."""
    result = evaluate_policy(store_uri, dataset, f"checkpoint:{checkpoint}", mode, episodes, seeds, protocol)
    run_logger().info(evaluation_line("model", result))
    return result


def evaluate_baseline(
    store_uri: str, dataset: str, policy: str, mode: str, episodes: int, seeds: int, protocol: str
) -> dict[str, Any]:
    """R_cumu, Length and R_avg (with intervals) of the baseline ``policy`` (random, popularity)."""
    result = evaluate_policy(store_uri, dataset, policy, mode, episodes, seeds, protocol)
    run_logger().info(evaluation_line(policy, result))
    return result


def evaluation_line(policy: str, result: dict[str, Any]) -> str:
    """``model in FB/paper: R_cumu 10.123 ± 0.456, Length 3.21, R_avg 3.153 (600 episodes, 3 seeds)``."""
    return (
        f"{policy} in {result['mode']}/{result['protocol']}: R_cumu {result['R_cumu']:.3f} ± "
        f"{result['R_cumu_ci95']:.3f}, Length {result['Length']:.2f}, R_avg {result['R_avg']:.3f} "
        f"({result['episodes']:,} episodes, {len(result['seeds'])} seeds)"
    )


def champion_score(
    store_uri: str, dataset: str, checkpoint: str, mode: str, protocol: str, episodes: int, seeds: int
) -> float | None:
    """The champion's R_cumu on the gate's environment and seeds; None when it cannot play there (its catalogue is
    not the environment's, e.g. new items arrived)."""
    try:
        return float(evaluate_checkpoint(store_uri, dataset, checkpoint, mode, protocol, episodes, seeds)["R_cumu"])
    except InputError:
        return None
