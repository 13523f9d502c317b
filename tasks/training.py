"""Training and evaluation steps of the ``train-mdt4rec`` flow, as plain functions (the flow wraps them as tasks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mdt4rec_core.envs.api import evaluate_policy
from mdt4rec_core.errors import InputError
from mdt4rec_core.profiles import RunPlan
from mdt4rec_core.train import load_preset, train_on_store


def train_model(plan: RunPlan, out: Path) -> dict[str, Any]:
    """Train on the current trajectory set; with ``scale.train_processes`` > 1, under torchrun (DDP, gloo on CPU)."""
    pipeline = plan.pipeline
    if plan.scale.train_processes == 1:
        return train_on_store(pipeline.store, pipeline.dataset, load_preset(plan.preset, plan.preset_overrides), out)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={plan.scale.train_processes}",
        "-m",
        "mdt4rec_cli",
        "train",
        "--store",
        pipeline.store,
        "--dataset",
        pipeline.dataset,
        "--preset",
        plan.preset,
        *(part for assignment in plan.preset_overrides for part in ("--set", assignment)),
        "--out",
        str(out),
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    refusals = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.startswith("error: ")]
    if result.returncode != 0 and refusals:
        raise InputError(refusals[0])  # bad input (every rank says the same): one line, as in a single process
    if result.returncode != 0:
        raise RuntimeError(f"torchrun training failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
