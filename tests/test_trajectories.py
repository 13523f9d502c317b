"""Trajectory building on hand-computed cases, and versioning by inputs."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from mdt4rec_core.config import TrajectoryConfig
from mdt4rec_core.data.episodes import SessionRule
from mdt4rec_core.data.trajectories import current_version, episode_rule, trailing_windows, trajectories_in_memory

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _events(rows):
    return pl.DataFrame(
        [(u, i, T0 + dt.timedelta(seconds=s), f) for u, i, s, f in rows],
        schema={
            "user_id": pl.String,
            "item_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "feedback": pl.Float64,
        },
        orient="row",
    )


def test_steps_states_rewards_and_returns_by_hand():
    # user a: 5 events (given out of order), feedback 1..5; user b: 2 events. Max 3 steps per episode, state of 2.
    events = _events(
        [
            ("a", "x3", 30, 3),
            ("a", "x1", 10, 1),
            ("a", "x2", 20, 2),
            ("a", "x4", 40, 4),
            ("a", "x5", 50, 5),
            ("b", "x1", 5, 5),
            ("b", "x2", 6, 1),
        ]
    )
    config = TrajectoryConfig(state_length=2, max_episode_steps=3)
    result = trajectories_in_memory(events, config, episode_rule(config))
    steps = result.steps
    index = dict(zip(result.catalogue["item_id"], result.catalogue["index"], strict=True))
    assert result.catalogue["item_id"].to_list() == ["x1", "x2", "x3", "x4", "x5"]
    a = steps.filter(pl.col("user_id") == "a")
    assert a["episode"].to_list() == [0, 0, 0, 1, 1]
    assert a["step"].to_list() == [0, 1, 2, 0, 1]
    assert a["action"].to_list() == [index[f"x{k}"] for k in range(1, 6)]
    assert a["reward"].to_list() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])  # (f - 1) / (5 - 1)
    assert a["return_to_go"].to_list() == pytest.approx([0.75, 0.75, 0.5, 1.75, 1.0])
    assert a["done"].to_list() == [False, False, True, False, True]
    # Episode 1 starts from its initial item x3 (the item that ended episode 0), whose feedback is hidden (0).
    x1, x2, x3, x4 = (index[f"x{k}"] for k in range(1, 5))
    assert a["state_items"].to_list() == [[], [x1], [x1, x2], [x3], [x3, x4]]
    assert a["state_feedback"].to_list() == [[], [0.0], [0.0, 0.25], [0.0], [0.0, 0.75]]
    b = steps.filter(pl.col("user_id") == "b")
    assert b["episode"].to_list() == [0, 0] and b["done"].to_list() == [False, True]
    assert b["return_to_go"].to_list() == pytest.approx([1.0, 0.0])
    assert (result.stats.users, result.stats.items, result.stats.episodes, result.stats.steps) == (2, 5, 3, 7)


def test_state_keeps_only_the_last_n_of_the_episode():
    events = _events([("a", f"x{k}", k, 1) for k in range(6)])
    config = TrajectoryConfig(state_length=3, max_episode_steps=30)
    steps = trajectories_in_memory(events, config, episode_rule(config)).steps
    assert steps["state_items"].to_list()[-1] == [2, 3, 4]
    assert steps["reward"].to_list() == [1.0] * 6  # equal feedback everywhere: every logged event counts fully


def test_session_gap_starts_a_new_episode():
    events = _events([("a", "x1", 0, 1), ("a", "x2", 60, 2), ("a", "x3", 4000, 3), ("a", "x4", 4010, 4)])
    rule = SessionRule(max_steps=30, gap_seconds=3600)
    steps = trajectories_in_memory(events, TrajectoryConfig(), rule).steps
    assert steps["episode"].to_list() == [0, 0, 1, 1]
    assert steps["step"].to_list() == [0, 1, 0, 1]


def test_trailing_windows():
    values = pl.Series("v", [10, 11, 12, 13])
    assert trailing_windows(values, np.array([0, 1, 2, 1])).to_list() == [[], [10], [10, 11], [12]]


def test_version_changes_with_data_and_config_only(ingest, tmp_path):
    log = tmp_path / "logs"
    log.mkdir()
    (log / "day1.csv").write_text("user_id,item_id,timestamp,feedback\nu1,i1,1,1\nu1,i2,2,2\nu2,i1,3,3\n")
    first, store = ingest(log)
    assert first["trajectories_built"]
    again, _ = ingest(log)
    assert not again["trajectories_built"] and again["trajectory_version"] == first["trajectory_version"]
    other_config, _ = ingest(log, state_length=5)
    assert other_config["trajectories_built"] and other_config["trajectory_version"] != first["trajectory_version"]
    assert current_version(store, "log") == other_config["trajectory_version"]
    # The first settings again: their set is reused, and it is what the pipeline trains on again.
    back, _ = ingest(log)
    assert not back["trajectories_built"] and current_version(store, "log") == first["trajectory_version"]
    (log / "day2.csv").write_text("user_id,item_id,timestamp,feedback\nu3,i3,4,1\n")
    new_data, _ = ingest(log)
    assert new_data["trajectories_built"] and new_data["steps"] == 4
    assert len({first["trajectory_version"], other_config["trajectory_version"], new_data["trajectory_version"]}) == 3
    assert store.exists(f"trajectories/dataset=log/version={first['trajectory_version']}/build.json")


def test_bucketed_build_equals_the_whole_build(ingest, tmp_path):
    from mdt4rec_core.data.trajectories import build_bucket, load_trajectories, plan_trajectories

    log = tmp_path / "log.csv"
    rows = [f"u{k % 7},i{(k * 5) % 11},{1_700_000_000 + k},{k % 5}" for k in range(120)]
    log.write_text("user_id,item_id,timestamp,feedback\n" + "\n".join(rows) + "\n")
    summary, store = ingest(log, max_episode_steps=4, state_length=3)
    whole = load_trajectories(store, "log")
    assert whole is not None and whole.stats.steps == summary["steps"] == 120
    config = TrajectoryConfig(max_episode_steps=4, state_length=3)
    plan = plan_trajectories(store, "log", config, episode_rule(config), max_rows_per_bucket=25)
    assert plan.buckets == 5 and plan.version == summary["trajectory_version"]
    parts = pl.concat([build_bucket(store, plan, b) for b in range(plan.buckets)])
    order = ["user_id", "episode", "step"]
    assert parts.sort(order).equals(whole.steps.sort(order))
