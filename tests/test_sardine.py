"""SARDINE: its epsilon-greedy logs enter the store with row accounting intact; its environments run our policies."""

import json
import subprocess
import sys

import numpy as np
import polars as pl

from mdt4rec_core.data.store import Store
from mdt4rec_core.envs import sardine
from mdt4rec_core.envs.policies import RandomPolicy
from tests.conftest import quarantined, stored

ENV = "sardine/SingleItem-Static-v0"


def test_generated_logs_are_reproducible_and_exploit_the_oracle():
    first = sardine.generate_log(ENV, users=4, epsilon=0.5, seed=3)
    assert first.equals(sardine.generate_log(ENV, users=4, epsilon=0.5, seed=3))
    assert not first.equals(sardine.generate_log(ENV, users=4, epsilon=0.5, seed=4))
    assert first.height == 400 and first["user_id"].n_unique() == 4
    greedy = sardine.generate_log(ENV, users=4, epsilon=0.0, seed=3)["feedback"].mean()
    random = sardine.generate_log(ENV, users=4, epsilon=1.0, seed=3)["feedback"].mean()
    assert greedy > first["feedback"].mean() > random


def test_sardine_logs_command_ingests_with_row_accounting(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdt4rec_cli",
            "sardine-logs",
            "--env",
            ENV,
            "--users",
            "6",
            "--epsilon",
            "0.3",
            "--store",
            str(tmp_path / "store"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows_read"] == 600 == summary["rows_accepted"] + summary["rows_quarantined"]
    store = Store(tmp_path / "store")
    dataset = sardine.dataset_name(ENV)
    assert stored(store, dataset).height == summary["rows_accepted"]
    assert quarantined(store, dataset).height == summary["rows_quarantined"]
    assert summary["users"] == 6 and summary["steps"] == summary["rows_accepted"]
    counts = sardine.item_counts(store, ENV)
    assert counts.sum() == summary["rows_accepted"] and len(counts) == 1000


def test_policies_run_in_sardine_environments():
    log = sardine.run_sardine_episodes(ENV, RandomPolicy(1000), "NX_0", episodes=3, seed=0)
    assert (log.lengths == 100).all()
    assert all(len(set(a.tolist())) == 100 for a in log.actions)  # NX_0 never repeats an item
    short = sardine.run_sardine_episodes(ENV, RandomPolicy(1000), "NX_10", episodes=2, seed=0)
    assert (short.lengths == 10).all() and ((short.returns >= 0) & (short.returns <= 10)).all()
    again = sardine.run_sardine_episodes(ENV, RandomPolicy(1000), "NX_10", episodes=2, seed=0)
    assert np.array_equal(short.returns, again.returns)
    assert pl.Series(short.returns).dtype == pl.Float64


def test_a_model_trained_on_sardine_logs_is_evaluated_in_sardine(tmp_path):
    from mdt4rec_core.envs.api import evaluate_policy

    store = str(tmp_path / "store")
    for command in (
        ["sardine-logs", "--env", ENV, "--users", "8", "--epsilon", "0.5", "--store", store, "--json"],
        [
            "train",
            "--store",
            store,
            "--dataset",
            sardine.dataset_name(ENV),
            "--preset",
            "tiny",
            "--max-steps",
            "10",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "mdt4rec_cli", *command], capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-2000:]
    report = evaluate_policy(
        store,
        "sardine:" + ENV,
        f"checkpoint:{tmp_path / 'run' / 'checkpoint'}",
        "NX_10",
        episodes=3,
        seeds=1,
        protocol="paper",
    )
    assert report["episodes"] == 3 and report["Length"] == 10 and 0 <= report["R_cumu"] <= 10
    assert sum(report["chosen_history_lengths"].values()) == 30
