"""Hostile input to a trained checkpoint, from the user's side: non-finite feedback in ``mdt4rec recommend`` and in
the pyfunc model (the served one: every refusal is an INVALID_PARAMETER_VALUE MlflowException, status 400 when
served), oversized requests, resuming a run on other data or with other model settings, and damaged checkpoint and
run files. Each is one ``error:`` line (exit status 2) naming the field or file, never a traceback."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mdt4rec_core.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore")
DATASET = "shop"
DAMAGED = "the checkpoint is damaged: train it again or restore the folder"


def write_log(path: Path, users: range, start: int) -> Path:
    """20 events per user over 30 items, one minute apart, ratings 1-5 (the same on every run)."""
    rng = np.random.default_rng(users.start)
    lines = ["user_id,item_id,timestamp,feedback"]
    for user in users:
        for step in range(20):
            lines.append(f"u{user},i{rng.integers(30)},{start + user * 10_000 + step * 60},{rng.integers(1, 6)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def ingest(store: Path, log: Path) -> None:
    from mdt4rec_core.config import RunConfig, resolve_dataset
    from tasks.ingest import run_ingest

    run_ingest(RunConfig(dataset=DATASET, store=str(store)), resolve_dataset(DATASET, str(log), "csv"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A store with 40 users' logs and a run folder of the tiny preset trained 2 steps on them."""
    root = tmp_path_factory.mktemp("hostile")
    ingest(root / "store", write_log(root / "first.csv", range(40), 1_704_067_200))
    train_in_process(root / "store", root / "run", 2)
    return root


def mdt4rec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdt4rec_cli", *args], capture_output=True, text=True, timeout=300)


def refused(result: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a command that exited with status 2 and printed no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def train(store: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    common = ["--dataset", DATASET, "--store", str(store), "--preset", "tiny", "--max-steps", "2", "--out", str(out)]
    return mdt4rec("train", *common, *extra)


def train_in_process(store: Path, out: Path, steps: int) -> dict:
    from mdt4rec_core.config import load_run_config
    from mdt4rec_core.train import train_on_store

    return train_on_store(
        load_run_config(dataset=DATASET, overrides=[f"train.max_steps={steps}"], preset="tiny", store=str(store)), out
    )


def recommend(checkpoint: Path, feedback: str) -> subprocess.CompletedProcess:
    return mdt4rec("recommend", "--checkpoint", str(checkpoint), "--history", "i1,i2", "--feedback", feedback)


def test_non_finite_feedback_in_recommend_is_one_error_line(trained):
    assert refused(recommend(trained / "run" / "checkpoint", "4,nan")) == (
        "error: feedback[1] is nan: feedback values must be finite numbers"
    )


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """The run's checkpoint logged and loaded as the pyfunc model, as ``mlflow models serve`` loads it."""
    import mlflow

    from mdt4rec_core.config import TrackingConfig
    from tasks import tracking

    root = tmp_path_factory.mktemp("mlflow")
    config = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", artifacts=str(root / "mlartifacts"))
    with pytest.MonkeyPatch.context() as patch:
        # connect() writes both URIs into os.environ: set here, they are put back when the context ends, so that
        # no later module's servers inherit this registry.
        patch.setenv("MLFLOW_TRACKING_URI", config.uri)
        patch.setenv("MLFLOW_REGISTRY_URI", config.uri)
        client = tracking.connect(config)
        run_id = client.create_run(tracking.experiment_id(client, DATASET, config)).info.run_id
        return mlflow.pyfunc.load_model(tracking.log_model(run_id, trained / "run" / "checkpoint"))


def refusal(served, request: pd.DataFrame) -> str:
    """The message of the 400 the served model answers ``request`` with."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as raised:
        served.predict(request)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE" and raised.value.get_http_status_code() == 400
    return raised.value.message


def test_the_served_model_takes_feedback_per_row_and_names_the_bad_row(served):
    mixed = pd.DataFrame([{"history": ["i1", "i2"], "feedback": [5, 2.5]}, {"history": ["i3"]}])
    answer = served.predict(mixed, params={"k": 3})
    assert [len(items) for items in answer["items"]] == [3, 3]
    assert served.predict(pd.DataFrame([{"history": ["i3"], "feedback": None}]))["items"].map(len).tolist() == [10]
    cases = {
        "row 1: feedback[0] is nan: feedback values must be finite numbers": [float("nan"), 1.0],
        "row 1: feedback[1] is inf: feedback values must be finite numbers": [1.0, float("inf")],
        "row 1: feedback[0] is null: give a finite number for every history item": [None, 1.0],
        "row 1: feedback[1] is not a number ('high')": [1.0, "high"],
        "row 1: feedback has 1 values for 2 history items": [1.0],
    }
    for message, feedback in cases.items():
        request = pd.DataFrame([{"history": ["i1"]}, {"history": ["i1", "i2"], "feedback": feedback}])
        assert refusal(served, request) == message


def test_a_k_below_one_is_refused_naming_the_parameter(served):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as raised:
        served.predict(pd.DataFrame([{"history": ["i1"]}]), params={"k": 0})
    assert raised.value.message == "the parameter k must be at least 1 (got 0)"
    assert raised.value.get_http_status_code() == 400


def test_a_request_beyond_the_row_limit_is_refused_naming_the_setting(served):
    from mdt4rec_core.config import load_run_config

    limit = load_run_config().serving.max_users_per_request
    assert refusal(served, pd.DataFrame({"history": [["i1"]] * (limit + 1)})) == (
        f"the request holds {limit + 1:,} rows; at most {limit:,} users per request (serving.max_users_per_request)"
    )


def test_resuming_on_new_data_or_with_other_model_settings_is_refused(trained, tmp_path):
    store, run = tmp_path / "store", tmp_path / "run"
    shutil.copytree(trained / "store", store)
    shutil.copytree(trained / "run", run)
    assert refused(train(store, run, "--set", "model.item_dim=32", "--set", "model.backbone.tiny_layers=3")) == (
        f"error: {run} holds a run of other model settings (item_dim: 16 -> 32; backbone.tiny_layers: 2 -> 3): "
        f"train into another --out (or delete {run}) to start fresh"
    )
    with pytest.raises(InputError) as fewer:
        train_in_process(store, run, 1)
    assert str(fewer.value) == (
        f"{run} already holds 2 training steps, more than train.max_steps 1: raise --max-steps, or train into "
        f"another --out (or delete {run}) to start fresh"
    )
    old = json.loads((run / "checkpoint" / "metadata.json").read_text())["trajectory_version"]
    ingest(store, write_log(tmp_path / "second.csv", range(40, 50), 1_705_067_200))
    line = refused(train(store, run))
    assert line.startswith(f"error: {run} holds a run trained on {DATASET} trajectory version {old}, not on the ")
    assert line.endswith(f": train into another --out (or delete {run}) to start fresh")


def test_a_damaged_checkpoint_file_is_one_error_line_naming_it(trained, tmp_path):
    from mdt4rec_core.model.checkpoint import load_checkpoint

    checkpoint = tmp_path / "run" / "checkpoint"
    shutil.copytree(trained / "run", tmp_path / "run")
    catalogue = (checkpoint / "catalogue.parquet").read_bytes()
    (checkpoint / "catalogue.parquet").write_bytes(catalogue[: len(catalogue) // 2])
    assert refused(recommend(checkpoint, "5,5")) == (
        f"error: {checkpoint / 'catalogue.parquet'}: not a readable Parquet file (ComputeError); {DAMAGED}"
    )
    (checkpoint / "catalogue.parquet").write_bytes(catalogue)
    damaged = {
        '{"dataset": "shop", "feedback_': "not valid JSON (JSONDecodeError)",
        "[1, 2]": "expected a JSON object",
        '{"dataset": "shop", "trajectory_version": "v", "feedback_min": 1, "feedback_max": NaN}': (
            "feedback_max must be a finite number (found nan)"
        ),
    }
    for content, problem in damaged.items():
        (checkpoint / "metadata.json").write_text(content)
        with pytest.raises(InputError) as raised:
            load_checkpoint(checkpoint)
        assert str(raised.value) == f"{checkpoint / 'metadata.json'}: {problem}; {DAMAGED}"


def test_damaged_run_files_stop_a_resume_with_one_error_line(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    state = (run / "training_state.json").read_text()
    (run / "training_state.json").write_text(state[:10])
    with pytest.raises(InputError) as raised:
        train_in_process(trained / "store", run, 3)
    assert str(raised.value) == (
        f"{run / 'training_state.json'}: damaged training state (JSONDecodeError); train into another --out "
        f"(or delete {run}) to start fresh"
    )
    (run / "training_state.json").write_text(state)
    (run / "optimizer.pt").write_bytes((run / "optimizer.pt").read_bytes()[:100])
    with pytest.raises(InputError) as raised:
        train_in_process(trained / "store", run, 3)
    assert str(raised.value) == (
        f"{run / 'optimizer.pt'}: damaged optimizer state (RuntimeError); train into another --out "
        f"(or delete {run}) to start fresh"
    )


def test_loading_a_damaged_checkpoint_as_the_served_model_names_the_file(trained, tmp_path):
    from mlflow.exceptions import MlflowException

    from tasks.serving_model import MDT4RecModel

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(trained / "run" / "checkpoint", checkpoint)
    (checkpoint / "metadata.json").write_text(json.dumps({"dataset": DATASET, "trajectory_version": "v"}))
    context = type("Context", (), {"artifacts": {"checkpoint": str(checkpoint)}})()
    with pytest.raises(MlflowException) as raised:
        MDT4RecModel().load_context(context)
    assert raised.value.message == (
        f"{checkpoint / 'metadata.json'}: feedback_min must be a finite number (found None); {DAMAGED}"
    )


def test_a_refusal_under_torchrun_is_its_error_line(monkeypatch, tmp_path):
    from mdt4rec_core.config import load_run_config
    from tasks import training

    stderr = "W0101 torchrun warning\nerror: runs/x holds a run of other model settings (item_dim: 16 -> 32)\n"
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr=stderr + "torch.distributed...ChildFailedError\n")
    monkeypatch.setattr(training.subprocess, "run", lambda *args, **kwargs: failed)
    run = load_run_config("smoke", "ml-100k", ["scale.train_processes=2"])
    with pytest.raises(InputError, match=r"^runs/x holds a run of other model settings \(item_dim: 16 -> 32\)$"):
        training.train_model(run, tmp_path / "ddp")
