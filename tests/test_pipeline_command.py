"""The README run command's path: `mdt4rec pipeline` with no server at all (Prefect's ephemeral API, MLflow on a
sqlite file in the working folder), run twice: the second run finds nothing new and trains nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
SMALL = ["--set", "train.max_steps=3", "--set", "evaluation.episodes=5", "--set", "evaluation.seeds=1"]


def _pipeline(work: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    command = [str(BIN / "mdt4rec"), "pipeline", "--profile", "smoke", "-d", "ml-100k", *SMALL, "--json"]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)


def test_the_embedded_pipeline_trains_registers_and_then_skips(tmp_path):
    first = _pipeline(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["registration"]["version"] == 1 and summary["registration"]["promoted"]
    assert summary["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "mlartifacts" / "mdt4rec-ml-100k").is_dir() and (tmp_path / "store").is_dir()
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in first.stderr

    second = _pipeline(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    skipped = json.loads(second.stdout.strip().splitlines()[-1])
    assert skipped["skipped"].startswith("no new data") and "version 1" in skipped["skipped"]
    assert "training" not in skipped
