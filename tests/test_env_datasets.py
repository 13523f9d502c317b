"""Every dataset yields a working environment: fixtures in the raw formats, and the installed MovieLens-100K."""

import json
import subprocess
import sys

import numpy as np
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
    assert built and isinstance(environment.quit_rule, rule)
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
