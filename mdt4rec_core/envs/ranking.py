"""Offline ranking metrics, leave-last-out: each user's last interaction is the target, everything before is history;
items are ranked over the full catalogue with the history's items excluded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mdt4rec_core.data.schema import ITEM_ID, TIMESTAMP, USER_ID


@dataclass(frozen=True)
class LeaveLastOut:
    """``users`` (U,) ids; ``targets`` (U,) catalogue index of each user's last item; ``seen`` (U, I) bool, the
    items of each user's history (target excluded unless it was also seen before)."""

    users: np.ndarray
    targets: np.ndarray
    seen: np.ndarray


def leave_last_out(interactions: pl.DataFrame, catalogue: pl.DataFrame) -> LeaveLastOut:
    """Split (user_id, item_id, timestamp) events of users with at least two events."""
    events = (
        interactions.select(USER_ID, ITEM_ID, TIMESTAMP)
        .join(catalogue, on=ITEM_ID)
        .sort(USER_ID, TIMESTAMP, ITEM_ID)
        .with_columns(pl.len().over(USER_ID).alias("_n"), pl.int_range(pl.len()).over(USER_ID).alias("_k"))
        .filter(pl.col("_n") >= 2)
    )
    users = events[USER_ID].unique(maintain_order=True)
    row = events.select(pl.col(USER_ID).rank("dense").cast(pl.Int64) - 1).to_series().to_numpy()
    last = (events["_k"] == events["_n"] - 1).to_numpy()
    targets = np.empty(len(users), dtype=np.int64)
    targets[row[last]] = events["index"].to_numpy()[last]
    seen = np.zeros((len(users), catalogue.height), dtype=bool)
    seen[row[~last], events["index"].to_numpy()[~last]] = True
    return LeaveLastOut(users.to_numpy(), targets, seen)


def ranking_metrics(scores: np.ndarray, split: LeaveLastOut, ks: tuple[int, ...] = (5, 10, 20)) -> dict[str, float]:
    """HR@k, NDCG@k, Recall@k and Precision@k averaged over users, from ``scores`` (U, I) (higher = better).

    The target's rank counts the unseen items scored strictly higher, so ties favour the target. With one
    held-out item per user, Recall@k equals HR@k and Precision@k is HR@k / k.
    """
    masked = np.where(split.seen, -np.inf, scores)
    target_scores = masked[np.arange(len(split.targets)), split.targets]
    rank = (masked > target_scores[:, None]).sum(axis=1)
    metrics = {}
    for k in ks:
        hit = rank < k
        metrics[f"HR@{k}"] = float(hit.mean())
        metrics[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())
        metrics[f"Recall@{k}"] = float(hit.mean())
        metrics[f"Precision@{k}"] = float(hit.mean() / k)
    return metrics
