"""The MLflow layer on a real sqlite-backed MLflow: a training's run (tags, parameters, dataset input, Data Docs,
losses while it trains), the promotion gate and model cards, promote/rollback, the pyfunc model, and an unreachable
tracking server."""

import json
import logging
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from mdt4rec_core.config import TrackingConfig
from mdt4rec_core.errors import InputError
from tasks import tracking

pytestmark = pytest.mark.filterwarnings("ignore")
NAME = "mdt4rec"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict:
    """MovieLens-100K ingested into a new store: the ingest summary (validations with their Data Docs)."""
    from mdt4rec_core.config import RunConfig, resolve_dataset
    from tasks.ingest import run_ingest

    store = str(tmp_path_factory.mktemp("tracking") / "store")
    return run_ingest(RunConfig(dataset="ml-100k", store=store), resolve_dataset("ml-100k"))


def _tiny(ingested: dict, *overrides: str):
    from mdt4rec_core.config import load_run_config

    return load_run_config(dataset="ml-100k", overrides=list(overrides), preset="tiny", store=ingested["store"])


@pytest.fixture(scope="module")
def checkpoint(ingested, tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on MovieLens-100K."""
    from mdt4rec_core.train import train_on_store

    summary = train_on_store(_tiny(ingested, "train.max_steps=5"), tmp_path_factory.mktemp("run"))
    return Path(summary["checkpoint"])


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tracking.connect(TrackingConfig())


CARD = tracking.ModelCard(
    dataset="ml-100k",
    trajectory_version="t1",
    episodes=34_833,
    steps=77_548,
    preset="tiny",
    profile="smoke",
    context_steps=20,
    adaptation="lora",
    lora_r=16,
    train_steps=30,
    evaluated_on="FB mode, paper protocol, 20 episodes over 2 seeds",
    scores={"model": (10.25, 0.5), "random": (9.8765, 0.4321)},
)


def _version(client, checkpoint, score, key="env/FB/paper/episodes=10/seeds=2", champion_score=None, floors=None):
    experiment = tracking.experiment_id(client, "ml-100k", TrackingConfig())
    run_id = client.create_run(experiment).info.run_id
    model_uri = tracking.log_model(run_id, checkpoint)
    gate = tracking.Gate(key, score, floors or {})
    tags = {"dataset": "ml-100k", "trajectory_version": "t1"}
    return tracking.register(client, NAME, model_uri, gate, tags, champion_score or (lambda champion: None), CARD)


def _champion(client) -> int:
    return int(client.get_model_version_by_alias(NAME, tracking.CHAMPION).version)


def test_the_champion_moves_only_for_a_better_version_and_rolls_back(client, checkpoint, tmp_path):
    first = _version(client, checkpoint, 10.0)
    assert first == {"version": 1, "promoted": True, "reason": "first version", "champion_score": None}
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts" / "mdt4rec-ml-100k").is_dir()

    equal = _version(client, checkpoint, 10.0)
    worse = _version(client, checkpoint, 9.5)
    assert not equal["promoted"] and not worse["promoted"] and _champion(client) == 1
    assert client.get_model_version(NAME, "3").tags["role"] == tracking.CHALLENGER

    better = _version(client, checkpoint, 10.5)
    assert better["promoted"] and better["champion_score"] == 10.0 and _champion(client) == 4
    assert client.get_model_version(NAME, "1").tags["role"] == tracking.CHALLENGER

    assert tracking.promote(client, NAME, 2) == {"champion": 2, "previous": 4}
    assert tracking.rollback(client, NAME) == {"champion": 4, "previous": 2}
    assert tracking.rollback(client, NAME) == {"champion": 1, "previous": 4}
    with pytest.raises(InputError, match="no earlier champion"):
        tracking.rollback(client, NAME)
    with pytest.raises(InputError, match="no version 99"):
        tracking.promote(client, NAME, 99)
    assert sorted(int(v.version) for v in tracking.versions_for(client, NAME, "ml-100k", "t1")) == [1, 2, 3, 4]


def test_a_champion_evaluated_elsewhere_is_re_scored_on_the_new_environment(client, checkpoint):
    _version(client, checkpoint, 10.0, key="old-environment/FB/paper/episodes=10/seeds=2")
    scored = []

    def rescore(champion):
        scored.append(str(champion.version))
        return 12.0

    kept = _version(
        client, checkpoint, 11.0, key="new-environment/FB/paper/episodes=10/seeds=2", champion_score=rescore
    )
    assert scored == ["1"] and not kept["promoted"] and kept["champion_score"] == 12.0
    incomparable = _version(client, checkpoint, 1.0, key="newer/FB/paper/episodes=10/seeds=2")
    assert incomparable["promoted"] and "not comparable" in incomparable["reason"]


def test_the_gate_refuses_a_version_that_does_not_beat_every_baseline(client, checkpoint):
    floors = {"random": 10.3, "popularity": 8.6}  # the upper 95 % bounds of the baselines' R_cumu
    below = _version(client, checkpoint, 10.0, floors=floors)
    assert not below["promoted"] and "random's upper 95 % bound 10.3000" in below["reason"]
    assert "popularity" not in below["reason"]  # 10.0 does beat popularity's bound
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(NAME, tracking.CHAMPION)  # even a first version must beat them
    tagged = client.get_model_version(NAME, "1").tags
    assert tagged["role"] == tracking.CHALLENGER and json.loads(tagged["gate_floors"]) == floors
    above = _version(client, checkpoint, 10.31, floors=floors)
    assert above["promoted"] and _champion(client) == 2


def test_a_failing_gate_leaves_no_half_registered_version(client, checkpoint):
    _version(client, checkpoint, 10.0)

    def broken(champion):
        raise RuntimeError("simulator crashed")

    with pytest.raises(RuntimeError, match="simulator crashed"):
        _version(client, checkpoint, 11.0, key="other/FB/paper/episodes=10/seeds=2", champion_score=broken)
    assert [int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == [1]
    assert _champion(client) == 1


def test_the_pyfunc_loads_by_alias_and_answers_requests(client, checkpoint):
    import mlflow
    from mlflow.exceptions import MlflowException

    from mdt4rec_core.model.checkpoint import load_checkpoint

    _version(client, checkpoint, 10.0)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    items = load_checkpoint(checkpoint)[1]["item_id"].to_list()
    histories = [items[:3], items[3:4], items[5:8]]
    answer = model.predict(pd.DataFrame({"history": histories}))
    assert [len(row) for row in answer["items"]] == [10, 10, 10]
    assert all(set(row).isdisjoint(hist) for row, hist in zip(answer["items"], histories, strict=True))
    chosen = answer["chosen_history_length"].tolist()
    assert all(1 <= w <= len(h) + 1 for w, h in zip(chosen, histories, strict=True))  # t + 1 states after t items
    with_feedback = model.predict(
        pd.DataFrame({"history": histories[:2], "feedback": [[5.0, 1.0, 3.0], [1.0]]}), params={"k": 2}
    )
    assert [len(row) for row in with_feedback["items"]] == [2, 2]
    with pytest.raises(MlflowException, match="row 0: unknown item id 'no-such-item'"):
        model.predict(pd.DataFrame([{"history": ["no-such-item"]}]))


def test_an_unreachable_tracking_server_is_a_clear_error(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(tracking.TrackingUnavailable, match=f"MLflow at http://127.0.0.1:{port} cannot be reached"):
        tracking.connect(TrackingConfig())
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_key_of_a_profiles_run_config_is_a_param_of_its_run(client, ingested, profile):
    from mdt4rec_core.config import load_run_config

    run = load_run_config(profile, "ml-100k")
    experiment = tracking.experiment_id(client, "ml-100k", TrackingConfig())
    run_id = tracking.start_run(client, experiment, "params", run, ingested, tags={})
    params = client.get_run(run_id).data.params
    assert params == run.params()  # every key path under its own name, nothing else
    assert params["model.backbone.lora_r"] == str(run.model.backbone.lora_r) and params["profile"] == profile
    assert client.get_run(run_id).data.tags["profile"] == profile


def test_a_run_starts_with_its_code_its_data_docs_and_its_trajectory_set(client, ingested, tmp_path):
    import mlflow

    experiment = tracking.experiment_id(client, "ml-100k", TrackingConfig())
    run_id = tracking.start_run(
        client, experiment, "night", _tiny(ingested), ingested, tags={"prefect_flow_run_id": "f1"}
    )
    started = client.get_run(run_id)
    assert started.info.status == "RUNNING" and started.info.run_name == "night"

    repository = Path(tracking.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repository), "rev-parse", "HEAD"], capture_output=True, text=True)
    tags = started.data.tags
    assert tags["mlflow.source.git.commit"] == head.stdout.strip() and tags["git_dirty"] in ("true", "false")
    assert tags["prefect_flow_run_id"] == "f1" and tags["dataset"] == "ml-100k"

    (trained_on,) = started.inputs.dataset_inputs
    version = ingested["trajectory_version"]
    assert trained_on.dataset.name == "ml-100k-trajectories" and trained_on.dataset.digest == version
    assert (
        json.loads(trained_on.dataset.source)["uri"]
        == f"{ingested['store']}/trajectories/dataset=ml-100k/version={version}"
    )
    assert json.loads(trained_on.dataset.profile)["steps"] == ingested["steps"] > 0
    assert [(t.key, t.value) for t in trained_on.tags] == [("mlflow.data.context", "training")]

    pages = {Path(r["data_docs"]) for reports in ingested["validation"].values() for r in reports}
    assert len(pages) == 1 and next(iter(pages)).name == "index.html"  # each report names its site's entry page
    docs = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="validation", dst_path=str(tmp_path)))
    assert (docs / "data_docs" / "index.html").read_text() == next(iter(pages)).read_text()
    assert any((docs / "data_docs" / "validations").rglob("*.html"))  # the validation result pages it links to
    assert json.loads((docs / "summary.json").read_text()).keys() == {"interactions", "trajectories"}


def test_the_losses_reach_the_run_while_it_trains(client, ingested, tmp_path):
    from mdt4rec_core.train import train_on_store
    from tasks.training import TrainingProgress

    experiment = tracking.experiment_id(client, "ml-100k", TrackingConfig())
    run_id = client.create_run(experiment).info.run_id
    progress = TrainingProgress(client, run_id, every=4)
    seen = {}  # training step -> train_loss points the MLflow run held when that step began

    def watch(report):
        seen[report.step] = len(client.get_metric_history(run_id, "train_loss"))
        progress(report)

    before = time.time()
    run = _tiny(ingested, "train.max_steps=12", "train.validate_every=5")
    summary = train_on_store(run, tmp_path / "run", watch)
    assert seen[1] == 0 and seen[5] == 4 and seen[6] == 5 and seen[9] == 8 and seen[12] == 10
    assert progress.sent_through == 12
    losses = client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, 13))
    assert [m.value for m in losses] == pytest.approx([value for _, value in summary["history"]["train_loss"]])
    assert before * 1000 <= losses[0].timestamp <= losses[-1].timestamp <= time.time() * 1000
    assert [m.step for m in client.get_metric_history(run_id, "validation_loss")] == [5, 10, 12]
    assert tracking.history_metrics(summary["history"], progress.sent_through, time.time()) == []


def test_training_goes_on_when_the_server_stops_answering(monkeypatch, caplog):
    from mlflow import MlflowClient

    from mdt4rec_core.train import StepReport
    from tasks.training import TrainingProgress

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    progress = TrainingProgress(MlflowClient(f"http://127.0.0.1:{port}"), "run", every=2)
    with caplog.at_level(logging.INFO, logger="mdt4rec"):
        for step in range(1, 7):
            progress(StepReport(step, 6, {"train_loss": 1.0 / step}, 100.0, time.time()))
    assert progress.sent_through == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "MLflow did not take the losses up to step 2 (Connection refused): training goes on, and they are logged "
        "with the run's results"
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO][-1].startswith("step 6/6: loss 0.1667")
    history = {"train_loss": [[step, 1.0 / step] for step in range(1, 7)]}
    assert [m.step for m in tracking.history_metrics(history, progress.sent_through, time.time())] == list(range(1, 7))


def test_a_run_whose_block_fails_ends_failed(client):
    experiment = tracking.experiment_id(client, "ml-100k", TrackingConfig())
    run_id = client.create_run(experiment).info.run_id
    with pytest.raises(RuntimeError, match="training diverged"), tracking.marks_failed(client, run_id):
        raise RuntimeError("training diverged")
    assert client.get_run(run_id).info.status == "FAILED"


def test_experiment_model_and_versions_are_described(client, checkpoint):
    floors = {"random": 10.3}
    refused = _version(client, checkpoint, 10.25, floors=floors)
    promoted = _version(client, checkpoint, 10.5, floors=floors)
    experiment = client.get_experiment_by_name("mdt4rec-ml-100k")
    assert experiment.tags["mlflow.note.content"] == tracking.EXPERIMENT_DESCRIPTION.format(dataset="ml-100k")
    assert client.get_registered_model(NAME).description == tracking.MODEL_DESCRIPTION

    card = client.get_model_version(NAME, str(refused["version"])).description
    assert "ml-100k, trajectory set `t1` (77,548 steps in 34,833 episodes)" in card
    assert "preset `tiny` (profile `smoke`), K = 20 steps, adaptation lora, LoRA r = 16, 30 training steps" in card
    assert (
        "(95 % interval; FB mode, paper protocol, 20 episodes over 2 seeds): model 10.250 ± 0.500; random 9.877 ± 0.432"
        in card
    )
    assert card.endswith("**Gate**: challenger: R_cumu 10.2500 does not beat random's upper 95 % bound 10.3000")
    assert client.get_model_version(NAME, str(promoted["version"])).description.endswith(
        "**Gate**: champion: first version"
    )


def test_a_model_card_takes_the_runs_data_settings_and_gate_figures():
    from mdt4rec_core.config import load_run_config

    run = load_run_config("smoke", "ml-100k", ["model.context_steps=5", "model.backbone.lora_r=4"])
    card = tracking.ModelCard.of(
        run,
        ingest={"trajectory_version": "t2", "episodes": 3, "steps": 7},
        trained={"steps": 30},
        gate_row={
            "mode": "FB",
            "protocol": "paper",
            "R_cumu": 1.0,
            "R_cumu_ci95": 0.1,
            "episodes": 40,
            "seeds": [0, 1],
        },
        baselines=[{"policy": "popularity", "R_cumu": 0.5, "R_cumu_ci95": 0.2}],
    )
    assert (card.trajectory_version, card.episodes, card.steps, card.train_steps) == ("t2", 3, 7, 30)
    assert (card.preset, card.profile, card.context_steps, card.lora_r) == ("tiny", "smoke", 5, 4)
    assert card.scores == {"model": (1.0, 0.1), "popularity": (0.5, 0.2)}
    assert card.evaluated_on == "FB mode, paper protocol, 40 episodes over 2 seeds"
