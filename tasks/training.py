"""Training and evaluation steps of the ``train-mdt4rec`` flow, as plain functions (the flow wraps them as tasks).

A finished training is remembered by its inputs (dataset, store, trajectory set, the settings of the network, its
training and its trajectories, processes) in
``<runs>/by-inputs/<key>.json``, so that a later run with the same inputs can take its checkpoint instead of
training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mdt4rec_core.config import RunConfig
from mdt4rec_core.envs.api import evaluate_policy
from mdt4rec_core.errors import InputError
from mdt4rec_core.train import train_on_store

RUN_CONFIG_FILE = "run_config.json"


def train_model(run: RunConfig, out: Path) -> dict[str, Any]:
    """Train on the current trajectory set; with ``scale.train_processes`` > 1, under torchrun (DDP, gloo on CPU),
    every rank reading ``run`` from ``out/run_config.json``."""
    if run.scale.train_processes == 1:
        return train_on_store(run, out)
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
    return evaluate_policy(store_uri, dataset, f"checkpoint:{checkpoint}", mode, episodes, seeds, protocol)


def champion_score(
    store_uri: str, dataset: str, checkpoint: str, mode: str, protocol: str, episodes: int, seeds: int
) -> float | None:
    """The champion's R_cumu on the gate's environment and seeds; None when it cannot play there (its catalogue is
    not the environment's, e.g. new items arrived)."""
    try:
        return float(evaluate_checkpoint(store_uri, dataset, checkpoint, mode, protocol, episodes, seeds)["R_cumu"])
    except InputError:
        return None
