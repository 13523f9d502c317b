"""Consuming recommendations, on MovieLens-100K with a tiny model: ``mdt4rec score`` gives every user k ranked
unseen catalogue items from their last logged events, in one batched search per chunk of users; unknown user ids
are reported and skipped; the ``score-users`` flow writes the registered champion's rows into the store; the served
model answers a batch as it answers each row; and the logged model serves from an environment built from its own
files (``mlflow models serve --env-manager local``)."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import polars as pl
import pytest

from mdt4rec_core.config import TrackingConfig
from mdt4rec_core.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore")
DATASET = "ml-100k"
ML_100K_USERS = 943
ROOT = Path(__file__).resolve().parent.parent


class Trained(NamedTuple):
    store: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """MovieLens-100K ingested into a store, and the tiny preset trained 5 steps on it."""
    from mdt4rec_core.config import RunConfig, load_run_config, resolve_dataset
    from mdt4rec_core.train import train_on_store
    from tasks.ingest import run_ingest

    root = tmp_path_factory.mktemp("scoring")
    store = root / "store"
    run_ingest(RunConfig(dataset=DATASET, store=str(store)), resolve_dataset(DATASET))
    run = load_run_config(dataset=DATASET, overrides=["train.max_steps=5"], preset="tiny", store=str(store))
    return Trained(store, Path(train_on_store(run, root / "run")["checkpoint"]))


def logged(store: Path) -> pl.DataFrame:
    from mdt4rec_core.data.store import Store

    return Store(store).scan_interactions(DATASET).collect()


def mdt4rec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mdt4rec_cli", *args], capture_output=True, text=True, timeout=300)


def score_file(trained: Trained, out: Path, *extra: str) -> tuple[dict, pl.DataFrame, str]:
    """``mdt4rec score`` into ``out``: its JSON summary, the rows and what it printed on stderr."""
    result = mdt4rec(
        "score",
        "--checkpoint",
        str(trained.checkpoint),
        "--store",
        str(trained.store),
        "--out",
        str(out),
        "--json",
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1]), pl.read_parquet(out), result.stderr


@pytest.fixture
def search_calls(monkeypatch) -> list[int]:
    """The number of users of every batched search call made while the test runs."""
    from mdt4rec_core.inference import recommend

    calls: list[int] = []
    search = recommend.search

    def counted(model, contexts, config, *args, **kwargs):
        calls.append(len(contexts))
        return search(model, contexts, config, *args, **kwargs)

    monkeypatch.setattr(recommend, "search", counted)
    return calls


def test_scoring_every_user_gives_k_ranked_unseen_catalogue_items(trained, tmp_path):
    from mdt4rec_core.inference.batch import RECOMMENDATION_SCHEMA
    from mdt4rec_core.model.checkpoint import load_checkpoint
    from tasks.scoring import checkpoint_hash

    summary, recs, _ = score_file(trained, tmp_path / "recs.parquet", "-k", "10")
    events = logged(trained.store)
    assert recs.schema == pl.Schema(RECOMMENDATION_SCHEMA)
    assert summary["users_scored"] == events["user_id"].n_unique() == ML_100K_USERS
    assert summary["rows"] == recs.height == ML_100K_USERS * 10
    assert summary["unknown_users"] == summary["users_without_known_items"] == 0
    per_user = recs.group_by("user_id").agg(pl.col("rank"), pl.col("item_id").n_unique().alias("distinct"))
    assert per_user.height == ML_100K_USERS
    assert all(ranks == list(range(1, 11)) for ranks in per_user["rank"].to_list())
    assert (per_user["distinct"] == 10).all()
    catalogue = set(load_checkpoint(trained.checkpoint)[1]["item_id"].to_list())
    assert set(recs["item_id"].to_list()) <= catalogue
    repeated = recs.join(events.select("user_id", "item_id"), on=["user_id", "item_id"], how="semi")
    assert repeated.height == 0, repeated.head()
    assert recs["model"].unique().to_list() == [f"checkpoint-{checkpoint_hash(trained.checkpoint)}"]
    assert recs["generated_at"].n_unique() == 1
    assert recs["conditioned_return"].is_finite().all()


def test_every_inference_path_places_the_model_on_the_device_it_is_given(trained, tmp_path):
    """Recommend, the simulator's checkpoint policy and batch scoring take a device (here the only one there is:
    the CPU), place the model there and answer as with the checkpoint's own setting; a device this machine lacks is
    one line naming it."""
    import torch

    from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy
    from mdt4rec_core.inference.recommend import Recommender
    from mdt4rec_core.model.placement import model_device

    default = Recommender(trained.checkpoint)
    placed = Recommender(trained.checkpoint, device="cpu")
    assert (default.config.device, placed.config.device) == ("auto", "cpu")
    assert model_device(placed.model) == torch.device("cpu")
    history = default.catalogue["item_id"].head(4).to_list()
    assert placed.recommend(history, None, 5) == default.recommend(history, None, 5)
    policy = CheckpointPolicy(trained.checkpoint, default.catalogue, device="cpu")
    assert policy.config.device == "cpu" and model_device(policy.model) == torch.device("cpu")

    summary, _, _ = score_file(trained, tmp_path / "recs.parquet", "-k", "3", "--device", "cpu")
    assert summary["users_scored"] == ML_100K_USERS
    if not torch.cuda.is_available():
        for command in (
            ["recommend", "--checkpoint", str(trained.checkpoint), "--history", ",".join(history)],
            ["score", "--checkpoint", str(trained.checkpoint), "--store", str(trained.store)],
        ):
            result = mdt4rec(*command, "--device", "cuda")
            assert result.returncode != 0
            assert result.stderr.strip().splitlines()[-1].endswith("this machine has no CUDA device (use auto or cpu)")
            assert "Traceback" not in result.stderr


def test_each_user_is_scored_from_their_last_logged_events_as_if_alone(trained, search_calls):
    """One search call per chunk of 256 users, and each user's items equal a search on that user alone whose
    context is built here from the raw log: the last events in time order, the first as the initial item."""
    from mdt4rec_core.data.trajectories import normalised_rewards
    from mdt4rec_core.inference.histories import history_length
    from mdt4rec_core.inference.recommend import Recommender, context_from_history
    from mdt4rec_core.inference.search import search
    from tasks.scoring import score_users

    scored = score_users(str(trained.checkpoint), "all", 5, str(trained.store), None, TrackingConfig())
    assert search_calls == [256, 256, 256, ML_100K_USERS - 3 * 256]
    recommender = Recommender(trained.checkpoint)
    model, index = recommender.model, recommender.index
    length = history_length(model)
    assert scored.summary["history_length"] == length == min(model.config.context_steps, model.shape.max_timestep) - 1
    events = logged(trained.store).sort("user_id", "timestamp", "item_id")
    for user in ["1", "405", "655", "99"]:
        mine = events.filter(pl.col("user_id") == user)
        last = mine.tail(length + 1)
        items = np.array([index[i] for i in last["item_id"]])
        rewards = normalised_rewards(last["feedback"].to_numpy()[1:], recommender.low, recommender.high)
        context = context_from_history(
            items[1:],
            rewards.astype(np.float32),
            model.shape.items,
            model.shape.state_length,
            model.shape.max_return,
            exclude_seen=False,
            initial_item=int(items[0]),
        )
        context.forbidden = np.isin(np.arange(model.shape.items), [index[i] for i in mine["item_id"]])
        alone = search(model, [context], recommender.config.model_copy(update={"top_k": 5}))[0]
        rows = scored.frame.filter(pl.col("user_id") == user).sort("rank")
        assert rows["item_id"].to_list() == recommender.ids[alone.items].tolist()
        assert rows["chosen_history_length"].unique().to_list() == [alone.chosen_length]


def test_unknown_user_ids_in_a_file_are_reported_and_skipped(trained, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("1\nno-such-user\n2\n\n  3  \nghost\n1\n")
    summary, recs, printed = score_file(trained, tmp_path / "recs.parquet", "--users", str(users), "-k", "4")
    assert summary["users_requested"] == 5 and summary["users_scored"] == 3
    assert summary["unknown_users"] == 2 and summary["unknown_user_examples"] == ["no-such-user", "ghost"]
    assert sorted(recs["user_id"].unique().to_list()) == ["1", "2", "3"] and recs.height == 12
    assert "skipped 2 unknown user ids (no stored event in ml-100k), e.g. no-such-user, ghost" in printed


def test_user_files_in_csv_and_parquet_and_bad_ones_named(tmp_path):
    from mdt4rec_core.inference.histories import read_user_ids

    csv = tmp_path / "users.csv"
    csv.write_text("name,user_id\na,5\nb,6\nc,5\n")
    assert read_user_ids(csv) == ["5", "6"]
    parquet = tmp_path / "users.parquet"
    pl.DataFrame({"user_id": [7, 8]}).write_parquet(parquet)
    assert read_user_ids(parquet) == ["7", "8"]
    refusals = {
        "id,name\n1,a\n": f"{tmp_path / 'bad.csv'}: no user_id column (columns: id, name)",
        "user_id\n1\n\n2\n": f"{tmp_path / 'bad.csv'}: line 3: user_id is empty",
        "user_id,x\n1,a\n2,b\n,c\n": f"{tmp_path / 'bad.csv'}: line 4: user_id is empty",
        "": f"{tmp_path / 'bad.csv'}: not a readable CSV file (NoDataError)",
    }
    for content, message in refusals.items():
        (tmp_path / "bad.csv").write_text(content)
        with pytest.raises(InputError) as raised:
            read_user_ids(tmp_path / "bad.csv")
        assert str(raised.value) == message
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(InputError, match=r"blank\.txt: lists no user id$"):
        read_user_ids(tmp_path / "blank.txt")
    with pytest.raises(InputError, match=r"missing\.txt: no such file"):
        read_user_ids(tmp_path / "missing.txt")


def test_a_file_of_unknown_users_only_is_one_error_line(trained, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("ghost\nno-such-user\n")
    result = mdt4rec(
        "score", "--checkpoint", str(trained.checkpoint), "--store", str(trained.store), "--users", str(users)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: none of the 2 users in {users} has a stored event of dataset 'ml-100k' on an item the model knows "
        "(e.g. ghost, no-such-user)"
    )


@pytest.fixture(scope="module")
def registry(trained, tmp_path_factory):
    """A sqlite MLflow holding the checkpoint as version 1 of ``mdt4rec``, alias champion; its URI is
    MLFLOW_TRACKING_URI while the module's tests run."""
    import mlflow

    from tasks import tracking

    root = tmp_path_factory.mktemp("mlflow")
    config = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", artifacts=str(root / "mlartifacts"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", config.uri)
        patch.setenv("MLFLOW_REGISTRY_URI", config.uri)
        client = tracking.connect(config)
        run_id = client.create_run(tracking.experiment_id(client, DATASET, config)).info.run_id
        model_uri = tracking.log_model(run_id, trained.checkpoint)
        version = mlflow.register_model(model_uri, "mdt4rec").version
        client.set_registered_model_alias("mdt4rec", "champion", version)
        yield model_uri


def _score_users_flow(arguments: str) -> dict:
    """The score-users flow run the way README shows it, in a process of its own (Prefect's temporary API: a second
    test harness in one process can hang); its summary."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    code = f"import json; from flows.score_users import score_users; print(json.dumps(score_users({arguments})))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_flow_writes_the_champions_recommendations_into_the_store(trained, registry, tmp_path):
    folder = trained.store / "recommendations" / f"dataset={DATASET}" / "model=mdt4rec-v1"
    summary = _score_users_flow(f"k=3, store={str(trained.store)!r}")
    assert summary["model"] == "mdt4rec-v1" and summary["out"] == str(folder)
    recs = pl.read_parquet(folder / "part-00000.parquet")
    assert recs.height == ML_100K_USERS * 3 and recs["model"].unique().to_list() == ["mdt4rec-v1"]
    assert json.loads((folder / "scoring.json").read_text())["users_scored"] == ML_100K_USERS

    (tmp_path / "two.txt").write_text("5\n6\nghost\n")
    users = str(tmp_path / "two.txt")
    again = _score_users_flow(f"model='models:/mdt4rec/1', users={users!r}, k=2, store={str(trained.store)!r}")
    assert again["unknown_users"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet", "scoring.json"]
    assert pl.read_parquet(folder / "part-00000.parquet")["user_id"].unique().sort().to_list() == ["5", "6"]
    assert json.loads((folder / "scoring.json").read_text())["users_scored"] == 2


def served_request(items: list[str], rows: int, seed: int) -> pd.DataFrame:
    """``rows`` request rows: histories of 1-25 catalogue items, every third row without feedback."""
    rng = np.random.default_rng(seed)
    records = []
    for row in range(rows):
        history = [items[i] for i in rng.choice(len(items), rng.integers(1, 26), replace=False)]
        record = {"history": history}
        if row % 3:
            record["feedback"] = rng.integers(1, 6, len(history)).astype(float).tolist()
        records.append(record)
    return pd.DataFrame(records)


def test_the_served_model_answers_a_batch_as_it_answers_each_row(trained, registry, search_calls):
    import mlflow

    from mdt4rec_core.model.checkpoint import load_checkpoint

    model = mlflow.pyfunc.load_model(registry)
    request = served_request(load_checkpoint(trained.checkpoint)[1]["item_id"].to_list(), 300, seed=0)
    batch = model.predict(request, params={"k": 5})
    assert search_calls == [256, 44]
    alone = pd.concat([model.predict(request.iloc[[row]], params={"k": 5}) for row in range(len(request))])
    assert batch["items"].map(list).tolist() == alone["items"].map(list).tolist()
    assert batch["chosen_history_length"].tolist() == alone["chosen_history_length"].tolist()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pip_sources() -> list[str]:
    """The package sources and constraints pip is configured with, as uv options (uv does not read pip.conf)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    options = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url"}
    options["constraint"] = "--constraint"
    sources = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        option = options.get(key.rsplit(".", 1)[-1])
        if option:
            sources += [part for url in value.strip("'\"").split() for part in (option, url)]
    return [*sources, "--index-strategy", "unsafe-best-match"]


def fresh_environment(requirements: Path) -> Path:
    """A virtual environment holding exactly what installing ``requirements`` into a new one installs (and nothing
    of this project), from the sources pip is configured with; uv builds it (pip takes 3-5 minutes to unpack torch
    where uv takes seconds). It is built once per content of the requirements file, in place (a virtual environment
    cannot move), under ``$MDT4REC_CACHE/serving-venvs/`` (default ``~/.cache/mdt4rec``), and reused while that
    content is unchanged."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = Path(os.environ.get("MDT4REC_CACHE", Path.home() / ".cache" / "mdt4rec")) / "serving-venvs" / digest
    if (venv / "built-from.txt").is_file():  # written last: a build that stopped half-way is built again
        return venv
    started = time.monotonic()
    uv = str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    install = [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r", str(requirements)]
    installed = subprocess.run([*install, *_pip_sources()], capture_output=True, text=True, timeout=1800)
    assert installed.returncode == 0, installed.stderr[-3000:]
    shutil.copy(requirements, venv / "built-from.txt")
    print(f"built the serving environment from {requirements} in {time.monotonic() - started:.0f} s")
    return venv


def test_the_logged_model_serves_from_an_environment_built_from_its_own_files(trained, registry, tmp_path):
    """The model's folder alone (its requirements.txt, its code/ and artifacts/) is enough: an environment made by
    ``pip install -r requirements.txt`` without this project serves it with ``mlflow models serve``."""
    import mlflow

    from tasks.tracking import model_requirements

    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=registry, dst_path=str(tmp_path / "model")))
    requirements = folder / "requirements.txt"
    assert requirements.read_text().split() == model_requirements() and "torch==2.13.0" in model_requirements()
    assert (folder / "code" / "mdt4rec_core" / "inference" / "recommend.py").is_file()
    venv = fresh_environment(requirements)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true")
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import mdt4rec_core"], cwd=tmp_path, env=env, capture_output=True)
    assert b"No module named 'mdt4rec_core'" in probe.stderr  # the project is not installed there

    port = _free_port()
    command = [python, "-m", "mlflow", "models", "serve", "-m", str(folder), "--env-manager", "local"]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # its own process group: the serving workers it starts stop with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"{base}/health"):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no /health within 180 s"
            time.sleep(1)
        request = served_request(
            sorted(pd.read_parquet(folder / "artifacts/checkpoint/catalogue.parquet").item_id), 3, 1
        )
        body = {"dataframe_records": request.to_dict("records"), "params": {"k": 4}}
        post = urllib.request.Request(
            f"{base}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's PID is its process group's
        server.wait(timeout=60)
        log.close()
    expected = mlflow.pyfunc.load_model(registry).predict(request, params={"k": 4})
    assert [row["items"] for row in answer] == expected["items"].map(list).tolist()
    assert [row["chosen_history_length"] for row in answer] == expected["chosen_history_length"].tolist()
    deadline = time.monotonic() + 30
    while _answers(f"{base}/health") and time.monotonic() < deadline:  # its workers finish their shutdown
        time.sleep(0.5)
    assert not _answers(f"{base}/health")  # stopped with the server's process group


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
