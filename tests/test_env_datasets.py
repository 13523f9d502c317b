"""Every dataset yields a working environment: fixtures in the raw formats, and the installed MovieLens-100K."""

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from mdt4rec_core.config import load_dataset_config
from mdt4rec_core.envs.api import evaluate_policy
from mdt4rec_core.envs.build import build_or_load
from mdt4rec_core.envs.quit_rules import DistanceQuit, RepeatQuit
from tests.conftest import FIXTURES


@pytest.mark.parametrize(
    "dataset, rule",
    [
        ("coat", DistanceQuit),
        ("yahoo-r3", DistanceQuit),
        ("kuairec", RepeatQuit),
        ("kuairand-pure", RepeatQuit),
        ("ml-1m-grouplens", DistanceQuit),
    ],
)
def test_fixture_dataset_environment(ingest, dataset, rule):
    summary, store = ingest(FIXTURES / dataset, format=None, dataset=dataset)
    config = load_dataset_config(dataset)
    environment, built = build_or_load(store, config, "paper")
    assert not built  # the ingest's quit-rule cut of the training episodes built it already
    assert isinstance(environment.quit_rule, rule)
    assert environment.rewards.shape == (summary["users"], summary["items"])
    assert environment.rewards.min() >= 0 and environment.rewards.max() <= 5
    if config.environment.threshold is not None:
        assert environment.quit_rule.threshold == config.environment.threshold
    if rule is RepeatQuit:
        assert environment.quit_rule.features.any(axis=1).all()  # every fixture item has categories / tags
    again, built_again = build_or_load(store, config, "paper")
    assert not built_again and np.array_equal(again.rewards, environment.rewards)
    for mode in ("FB", "NX_0", "NX_10"):
        result = evaluate_policy(store.uri, dataset, "random", mode, episodes=20, seeds=2, protocol="paper")
        assert result["episodes"] == 40 and 1 <= result["Length"] <= 30
        if mode == "NX_10" and summary["items"] >= 10:
            assert result["Length"] == 10


def test_movielens_100k_environment_takes_a_percentile_threshold(ingest, tmp_path):
    summary, store = ingest(None, format=None, dataset="ml-100k")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdt4rec_cli",
            "evaluate",
            "--env",
            "ml-100k",
            "--policy",
            "popularity",
            "--mode",
            "FB",
            "--episodes",
            "200",
            "--seeds",
            "2",
            "--protocol",
            "strict",
            "--store",
            store.uri,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["quit_rule"]["rule"] == "distance" and report["quit_rule"]["threshold"] > 0
    assert report["Length"] == pytest.approx(2.0)  # the most popular item, then the same item again: leave
    assert {"R_cumu", "R_cumu_ci95", "Length", "R_avg", "episodes", "seeds", "seconds"} <= report.keys()


def test_bad_evaluation_arguments_are_one_line_errors(tmp_path):
    for args, message in (
        (["--policy", "oracle"], "unknown policy 'oracle'"),
        (["--mode", "XX"], "unknown mode 'XX'"),
        (["--protocol", "loose"], "unknown protocol 'loose'"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "mdt4rec_cli", "evaluate", "--store", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and f"error: {message}" in result.stderr


def test_training_episodes_end_where_the_simulated_user_leaves(ingest):
    from mdt4rec_core.data.trajectories import load_trajectories
    from mdt4rec_core.envs.simulator import BatchedEnv

    _, store = ingest(FIXTURES / "kuairand-pure", format=None, dataset="kuairand-pure", cut_by="quit_rule")
    environment, built = build_or_load(store, load_dataset_config("kuairand-pure"), "paper")
    assert not built  # the trajectory build already made it
    steps = load_trajectories(store, "kuairand-pure").steps
    assert steps["episode"].max() > 0  # the tag rule cuts the fixture's users into several episodes
    last_episode = dict(steps.group_by("user_id").agg(pl.col("episode").max()).iter_rows())
    for (user, number), episode in steps.group_by(["user_id", "episode"]):
        actions = episode.sort("step")["action"].to_numpy()
        env = BatchedEnv(environment.rewards, environment.quit_rule, "FB")
        env.reset(np.array([0]), np.array([0]))
        done_at = [bool(env.step(actions[k : k + 1])[1][0]) for k in range(len(actions))]
        assert done_at[:-1] == [False] * (len(actions) - 1)  # nobody leaves before the episode's last step
        # ... and leaves at it, unless the cap ended it or the user's log ran out.
        assert done_at[-1] or len(actions) == 30 or number == last_episode[user]


def test_strict_trajectories_leave_out_the_evaluation_users(ingest):
    from mdt4rec_core.data.trajectories import load_trajectories

    summary, store = ingest(None, format=None, dataset="ml-100k", protocol="strict")
    environment, _ = build_or_load(store, load_dataset_config("ml-100k"), "strict")
    held_out = set(environment.user_ids[environment.start_users].tolist())
    trained_on = set(load_trajectories(store, "ml-100k").steps["user_id"].unique().to_list())
    assert held_out and trained_on and not held_out & trained_on
    assert len(held_out) + len(trained_on) == 943 == summary["users"] + len(held_out)


def test_strict_users_can_be_cut_by_the_paper_simulators_quit_rule(ingest):
    from mdt4rec_core.data.trajectories import load_trajectories
    from mdt4rec_core.envs.simulator import BatchedEnv

    _, store = ingest(None, format=None, dataset="ml-100k", protocol="strict", quit_rule_protocol="paper")
    dataset = load_dataset_config("ml-100k")
    strict, _ = build_or_load(store, dataset, "strict")
    paper, built = build_or_load(store, dataset, "paper")
    assert not built  # the trajectory build made the paper simulator for its quit rule
    steps = load_trajectories(store, "ml-100k").steps
    held_out = set(strict.user_ids[strict.start_users].tolist())
    assert not held_out & set(steps["user_id"].unique().to_list())
    # Every episode runs until the paper simulator's user leaves (or the user's log runs out).
    last_episode = dict(steps.group_by("user_id").agg(pl.col("episode").max()).iter_rows())
    ended_by_the_rule = 0
    episodes = steps.partition_by(["user_id", "episode"], as_dict=True)
    for user, number in sorted(episodes)[:500]:
        episode = episodes[(user, number)]
        actions = episode.sort("step")["action"].to_numpy()
        env = BatchedEnv(paper.rewards, paper.quit_rule, "FB")
        env.reset(np.array([0]), np.array([0]))
        done_at = [bool(env.step(actions[k : k + 1])[1][0]) for k in range(len(actions))]
        assert done_at[:-1] == [False] * (len(actions) - 1)
        assert done_at[-1] or len(actions) == 30 or number == last_episode[user]
        ended_by_the_rule += done_at[-1]
    assert ended_by_the_rule > 0
