import datetime as dt

import numpy as np
import polars as pl
import pytest

from mdt4rec_core.data.catalogue import item_catalogue
from mdt4rec_core.envs.ranking import leave_last_out, ranking_metrics

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def test_leave_last_out_and_metrics_by_hand():
    events = pl.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "b", "c"],
            "item_id": ["x", "y", "z", "y", "w", "x"],
            "timestamp": [T0 + dt.timedelta(seconds=s) for s in (3, 1, 2, 5, 4, 1)],
        }
    )
    catalogue = item_catalogue(events["item_id"])  # w, x, y, z -> 0..3
    split = leave_last_out(events, catalogue)
    assert split.users.tolist() == ["a", "b"]  # c has a single event
    assert split.targets.tolist() == [1, 2]  # a's last is x (t=3), b's last is y (t=5)
    assert split.seen.tolist() == [[False, False, True, True], [True, False, False, False]]
    scores = np.array(
        [
            [9.0, 5.0, 8.0, 7.0],  # a: y, z seen -> ranking w(9) > x(5): rank 1
            [9.0, 1.0, 2.0, 3.0],
        ]
    )  # b: w seen -> z(3) > y(2): rank 1 ... x(1)
    metrics = ranking_metrics(scores, split, ks=(1, 2))
    assert metrics["HR@1"] == 0.0 and metrics["HR@2"] == 1.0
    assert metrics["NDCG@2"] == pytest.approx(1 / np.log2(3))
    assert metrics["Precision@2"] == 0.5 and metrics["Recall@2"] == 1.0


def test_perfect_scores_hit_everything():
    rng = np.random.default_rng(0)
    events = pl.DataFrame(
        {
            "user_id": [f"u{k // 5}" for k in range(50)],
            "item_id": [f"i{rng.integers(30)}" for _ in range(50)],
            "timestamp": [T0 + dt.timedelta(seconds=k) for k in range(50)],
        }
    ).unique(["user_id", "item_id"], keep="first")
    catalogue = item_catalogue(events["item_id"])
    split = leave_last_out(events, catalogue)
    scores = np.zeros(split.seen.shape)
    scores[np.arange(len(split.targets)), split.targets] = 1.0
    assert ranking_metrics(scores, split, ks=(1,)) == {"HR@1": 1.0, "NDCG@1": 1.0, "Recall@1": 1.0, "Precision@1": 1.0}
