"""The MLflow layer on a real sqlite-backed MLflow: the promotion gate, promote/rollback, the pyfunc model, and an
unreachable tracking server."""

import json
import socket
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
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on MovieLens-100K."""
    from mdt4rec_core.config import RunConfig, load_run_config, resolve_dataset
    from mdt4rec_core.train import train_on_store
    from tasks.ingest import run_ingest

    root = tmp_path_factory.mktemp("tracking")
    store = str(root / "store")
    run_ingest(RunConfig(dataset="ml-100k", store=store), resolve_dataset("ml-100k"))
    run = load_run_config(dataset="ml-100k", overrides=["train.max_steps=5"], preset="tiny", store=store)
    summary = train_on_store(run, root / "run")
    return Path(summary["checkpoint"])


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tracking.connect(TrackingConfig())


def _version(client, checkpoint, score, key="env/FB/paper/episodes=10/seeds=2", champion_score=None, floors=None):
    experiment = tracking.experiment_id(client, "ml-100k", TrackingConfig())
    run_id = client.create_run(experiment).info.run_id
    model_uri = tracking.log_model(run_id, checkpoint)
    gate = tracking.Gate(key, score, floors or {})
    tags = {"dataset": "ml-100k", "trajectory_version": "t1"}
    return tracking.register(client, NAME, model_uri, gate, tags, champion_score or (lambda champion: None))


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
def test_every_key_of_a_profiles_run_config_is_a_param_of_its_run(client, profile):
    from mdt4rec_core.config import load_run_config

    run = load_run_config(profile, "ml-100k")
    experiment = tracking.experiment_id(client, "ml-100k", TrackingConfig())
    run_id = tracking.record_run(
        client, experiment, "params", run, {"validation": {}}, {"history": {}}, evaluations=[], figures={}
    )
    params = client.get_run(run_id).data.params
    assert params == run.params()  # every key path under its own name, nothing else
    assert params["model.backbone.lora_r"] == str(run.model.backbone.lora_r) and params["profile"] == profile
    assert client.get_run(run_id).data.tags["profile"] == profile
