"""Training on the tiny preset: losses, checkpoints, resume after kill -9, DDP under torchrun, bad checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

from mdt4rec_core.config import SearchConfig, load_run_config
from mdt4rec_core.data.trajectories import load_trajectories
from mdt4rec_core.data.windows import collate, episode_arrays
from mdt4rec_core.errors import InputError
from mdt4rec_core.inference.recommend import recommend
from mdt4rec_core.model.checkpoint import load_checkpoint, read_run_config
from mdt4rec_core.train import validation_users

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """MovieLens-100K from the installed package, ingested once for the module."""
    from mdt4rec_core.config import RunConfig, resolve_dataset
    from tasks.ingest import run_ingest

    root = tmp_path_factory.mktemp("store")
    run_ingest(RunConfig(dataset="ml-100k", store=str(root)), resolve_dataset("ml-100k"))
    return str(root)


def mdt4rec(*args, timeout=600, prefix=()):
    command = [*prefix, "-m", "mdt4rec_cli", *args] if prefix else [sys.executable, "-m", "mdt4rec_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def train_tiny(store, out, steps, *extra):
    """The tiny preset on the module's MovieLens-100K store; the run's summary."""
    return last_json(
        mdt4rec(
            "train",
            "--store",
            store,
            "--dataset",
            "ml-100k",
            "--preset",
            "tiny",
            "--max-steps",
            str(steps),
            "--out",
            str(out),
            "--json",
            *extra,
        )
    )


def last_json(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tiny_preset_trains_compiled_and_the_checkpoint_round_trips(store, tmp_path):
    """Trained with the backbone compiled (``train.compile``), the checkpoint loads into a plain network."""
    summary = train_tiny(store, tmp_path / "run", 120, "--set", "train.compile=true")
    assert read_run_config(tmp_path / "run" / "checkpoint").train.compile
    keys = {
        "steps",
        "train_loss_first",
        "train_loss_last",
        "val_loss",
        "trainable_params",
        "total_params",
        "seconds",
        "checkpoint",
    }
    assert keys <= summary.keys() and summary["steps"] == 120
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert 0 < summary["trainable_params"] < summary["total_params"] and np.isfinite(summary["val_loss"])
    model, catalogue, metadata = load_checkpoint(tmp_path / "run" / "checkpoint")
    again, _, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    trajectories = load_trajectories(__import__("mdt4rec_core.data.store", fromlist=["Store"]).Store(store), "ml-100k")
    arrays = episode_arrays(trajectories.steps, model.shape.state_length, catalogue.height)
    batch = collate(arrays, np.arange(4), np.minimum(arrays.lengths[:4] - 1, 7), model.config.context_steps, "left")
    with torch.no_grad():
        first, second = model(batch), again(batch)
    assert torch.equal(first.action_logits, second.action_logits) and torch.equal(first.max_return, second.max_return)
    assert metadata["dataset"] == "ml-100k" and metadata["feedback_max"] == 5.0

    # The item quality: each item's reward over the training users' steps, shrunk toward the mean by 20 pseudo-steps.
    training = trajectories.steps.filter(~validation_users(trajectories.steps["user_id"], 0.05))
    per_item = training.group_by("action").agg(pl.col("reward").sum().alias("sum"), pl.len().alias("n"))
    overall = training["reward"].mean()
    sums, counts = np.zeros(catalogue.height), np.zeros(catalogue.height)
    sums[per_item["action"].to_numpy()], counts[per_item["action"].to_numpy()] = per_item["sum"], per_item["n"]
    assert np.allclose(model.item_quality.numpy(), (sums + 20 * overall) / (counts + 20), atol=1e-6)
    # A checkpoint written before the quality was kept still loads; decoding by quality is then one clear error.
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "run" / "checkpoint", old)
    weights = load_file(str(old / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if k != "item_quality"}, str(old / "model.safetensors"))
    assert not load_checkpoint(old)[0].item_quality.any()
    quality = SearchConfig(decoding="quality")
    with pytest.raises(InputError, match="no item quality"):
        recommend(old, ["1", "50"], [5, 4], k=3, config=quality)
    assert len(recommend(tmp_path / "run" / "checkpoint", ["1", "50"], [5, 4], k=3, config=quality)["items"]) == 3

    answer = recommend(tmp_path / "run" / "checkpoint", ["1", "50", "181"], [5, 4, 1], k=7)
    assert len(answer["items"]) == 7 and not {"1", "50", "181"} & set(answer["items"])
    assert answer["chosen_history_length"] in answer["max_return_estimates"]


def test_resume_after_kill_matches_an_uninterrupted_run(store, tmp_path):
    args = [
        "train",
        "--store",
        store,
        "--dataset",
        "ml-100k",
        "--preset",
        "tiny",
        "--max-steps",
        "200",
        "--set",
        "train.checkpoint_every=20",
        "--json",
    ]
    reference = last_json(mdt4rec(*args, "--out", str(tmp_path / "whole")))
    killed = tmp_path / "killed"
    writer = subprocess.Popen(
        [sys.executable, "-m", "mdt4rec_cli", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (killed / "training_state.json").exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL, "training finished before it could be killed"
    resumed = last_json(mdt4rec(*args, "--out", str(killed)))
    assert 0 < resumed["resumed_from"] < 200 and resumed["steps"] == 200
    assert resumed["train_loss_last"] == pytest.approx(reference["train_loss_last"], rel=1e-4)
    whole, interrupted = (load_file(str(p / "checkpoint" / "model.safetensors")) for p in (tmp_path / "whole", killed))
    assert whole.keys() == interrupted.keys()
    assert all(torch.allclose(whole[k], interrupted[k], atol=1e-5) for k in whole)


def test_two_process_torchrun_gloo_step(store, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "mdt4rec_cli",
            "train",
            "--store",
            store,
            "--dataset",
            "ml-100k",
            "--preset",
            "tiny",
            "--max-steps",
            "3",
            "--out",
            str(tmp_path / "ddp"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert summaries and all(s["world_size"] == 2 and s["steps"] == 3 for s in summaries)
    assert (tmp_path / "ddp" / "checkpoint" / "model.safetensors").is_file()


def test_the_train_task_runs_under_torchrun_with_two_processes(store, tmp_path):
    """The pipeline's train task with ``scale.train_processes=2``: it starts torchrun itself, every rank trains."""
    from tasks.training import train_model

    run = load_run_config(
        "smoke", "ml-100k", ["scale.train_processes=2", "train.max_steps=4", f"store={json.dumps(store)}"]
    )
    summary = train_model(run, tmp_path / "ddp")
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert (tmp_path / "ddp" / "checkpoint" / "model.safetensors").is_file()


def test_bad_checkpoints_and_requests_are_clear_errors(store, tmp_path):
    run = tmp_path / "run"
    train_tiny(store, run, 2)
    checkpoint = run / "checkpoint"
    with pytest.raises(InputError, match="unknown item id 'no-such-movie'"):
        recommend(checkpoint, ["1", "no-such-movie"], None, 5)
    with pytest.raises(InputError, match="history is empty"):
        recommend(checkpoint, [], None, 5)
    config = json.loads((checkpoint / "config.json").read_text())
    wider = {**config, "model": {**config["model"], "item_dim": config["model"]["item_dim"] * 2}}
    (checkpoint / "config.json").write_text(json.dumps(wider))
    with pytest.raises(InputError, match="config.json does not match model.safetensors"):
        load_checkpoint(checkpoint)
    (checkpoint / "config.json").write_text(json.dumps(config))
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="unreadable weights"):
        load_checkpoint(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    result = mdt4rec("recommend", "--checkpoint", str(checkpoint), "--history", "1,2", "--json")
    assert result.returncode == 2 and "model.safetensors missing" in result.stderr


def test_a_checkpoint_written_with_the_sizes_among_the_model_settings_still_loads(store, tmp_path):
    from mdt4rec_core.model.checkpoint import RUN_CONFIG, checkpoint_search, read_run_config

    run = tmp_path / "run"
    train_tiny(store, run, 2, "--set", "search.kappa=4")
    checkpoint = run / "checkpoint"
    assert read_run_config(checkpoint).search.kappa == 4 == checkpoint_search(checkpoint).kappa
    model, _, _ = load_checkpoint(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    flat = {**config["model"], **config["shape"]}  # the layout of config.json before it held {model, shape}
    del flat["item_factors"]
    (checkpoint / "config.json").write_text(json.dumps(flat))
    (checkpoint / RUN_CONFIG).unlink()
    old, _, _ = load_checkpoint(checkpoint)
    assert old.config == model.config and old.shape == model.shape
    assert read_run_config(checkpoint) is None and checkpoint_search(checkpoint).kappa == 10.0  # the default


def test_a_checkpoint_is_a_policy_in_the_simulator(store, tmp_path):
    from mdt4rec_core.envs.api import evaluate_policy

    run = tmp_path / "run"
    train_tiny(store, run, 20)
    result = evaluate_policy(
        store, "ml-100k", f"checkpoint:{run / 'checkpoint'}", "NX_0", episodes=12, seeds=1, protocol="paper"
    )
    assert result["episodes"] == 12 and 1 <= result["Length"] <= 30
    histogram = result["chosen_history_lengths"]
    assert sum(histogram.values()) == round(result["Length"] * 12)  # one decision per step
    assert all(1 <= length <= 20 for length in histogram)
    catalogue = run / "checkpoint" / "catalogue.parquet"
    catalogue.write_bytes(catalogue.read_bytes()[:-20])
    damaged = mdt4rec(
        "evaluate",
        "--env",
        "ml-100k",
        "--store",
        store,
        "--policy",
        f"checkpoint:{run / 'checkpoint'}",
        "--mode",
        "NX_0",
    )
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr
    assert [line for line in damaged.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {catalogue}: not a readable Parquet file (ComputeError); the checkpoint is damaged: train it again "
        "or restore the folder"
    ]


def test_prefetched_work_arrives_in_order_errors_at_their_step_and_stops_when_closed():
    import threading

    from mdt4rec_core.data.prefetch import prefetched

    made = []

    def make(step):
        made.append(step)
        if step == 5:
            raise ValueError("step 5 failed")
        return step * 10

    stream = prefetched(make, range(8), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 10, 20, 30, 40]
    with pytest.raises(ValueError, match="step 5 failed"):
        next(stream)
    assert made == [0, 1, 2, 3, 4, 5]  # nothing after the failure

    endless = prefetched(lambda step: step, iter(int, 1), depth=3)  # would never end by itself
    assert next(endless) == 0
    endless.close()
    assert not any(thread.name == "prefetch" and thread.is_alive() for thread in threading.enumerate())
