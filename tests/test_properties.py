"""Property tests: row accounting in ingestion, return-to-go consistency in trajectory building."""

import datetime as dt

import numpy as np
import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mdt4rec_core.config import DatasetConfig, TrajectoryConfig
from mdt4rec_core.data.ingest import plan_ingest, read_batch
from mdt4rec_core.data.store import Store
from mdt4rec_core.data.trajectories import episode_rule, trajectories_in_memory

GOOD = st.builds(
    lambda u, i, t, f: f"u{u},i{i},{1_600_000_000 + t},{f}",
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 50),
    st.integers(0, 5),
)
BAD = st.sampled_from(
    [
        "u1,i1,never,1",
        "u1,i1,1600000000,-3",
        "u1,,1600000000,1",
        "u1,i1,1600000000,nan",
        "u1,i1",
        "u1,i1,1600000000,1,1",
        "\ufffd,i1,1600000000,1",
        ",,,",
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(GOOD, BAD), max_size=40), truncate=st.booleans())
def test_every_row_is_accepted_or_quarantined(tmp_path_factory, lines, truncate):
    folder = tmp_path_factory.mktemp("log")
    body = "\n".join(lines) + ("" if truncate else "\n")
    (folder / "log.csv").write_bytes(("user_id,item_id,timestamp,feedback\n" + body).encode())
    dataset = DatasetConfig(name="p", format="csv", path=str(folder / "log.csv"))
    store = Store(folder / "store")
    (files,) = plan_ingest(dataset, store, batch_bytes=2**20).batches
    batch = read_batch(dataset, files, store)
    rows_read = sum(1 for line in lines if line) if lines else 0
    assert batch.rows_read == rows_read
    assert batch.accepted.height + batch.quarantined.height == rows_read
    good_keys = {tuple(line.split(",")[:3]) for line in lines if _is_good(line)}
    if not truncate or not lines or not _is_good(lines[-1]):
        assert batch.accepted.height == len(good_keys)  # one per distinct (user, item, timestamp)
    assert set(batch.quarantined["row"].drop_nulls().to_list()) <= set(range(2, rows_read + 2))


def _is_good(line: str) -> bool:
    """Whether a generated line came from GOOD (four well-formed fields)."""
    parts = line.split(",")
    return (
        len(parts) == 4
        and parts[0].startswith("u")
        and parts[1].startswith("i")
        and parts[2].isdigit()
        and parts[3].isdigit()
    )


@settings(max_examples=30, deadline=None)
@example(feedback=[0.0, 2.2250738585e-313], users=1, max_steps=1, state_length=1)  # a range below normal floats
@given(
    feedback=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60),
    users=st.integers(1, 4),
    max_steps=st.integers(1, 7),
    state_length=st.integers(1, 4),
)
def test_returns_to_go_sum_the_rest_of_each_episode(feedback, users, max_steps, state_length):
    n = len(feedback)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    events = pl.DataFrame(
        {
            "user_id": [f"u{k % users}" for k in range(n)],
            "item_id": [f"i{k % 5}" for k in range(n)],
            "timestamp": [t0 + dt.timedelta(seconds=k) for k in range(n)],
            "feedback": feedback,
        }
    )
    config = TrajectoryConfig(state_length=state_length, max_episode_steps=max_steps)
    steps = trajectories_in_memory(events, config, episode_rule(config)).steps
    for (_, _), episode in steps.group_by(["user_id", "episode"]):
        episode = episode.sort("step")
        rewards = episode["reward"].to_numpy().astype(float)
        expected = np.cumsum(rewards[::-1])[::-1]
        assert np.allclose(episode["return_to_go"].to_numpy(), expected, atol=1e-4)
        assert episode["step"].to_list() == list(range(episode.height))
        assert episode.height <= max_steps
        assert episode["done"].to_list() == [False] * (episode.height - 1) + [True]
        has_initial = int(episode["episode"][0] > 0)  # a later episode starts from the item that ended the last
        states = episode["state_items"].to_list()
        assert all(len(s) == min(k + has_initial, state_length) for k, s in enumerate(states))
