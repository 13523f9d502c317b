"""Batch scoring: the top-k items of many users, one batched stitched search per chunk of ``CHUNK_USERS`` users.

Each user's context comes from their logged events (``histories.logged_histories``); every item they acted on is
excluded from their recommendations. The result has one row per (user, rank), ``RECOMMENDATION_SCHEMA``.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import polars as pl

from mdt4rec_core.data.schema import ITEM_ID, TIMESTAMP_DTYPE, USER_ID
from mdt4rec_core.inference.recommend import CHUNK_USERS, Recommender
from mdt4rec_core.inference.search import EpisodeContext

log = logging.getLogger(__name__)

RECOMMENDATION_SCHEMA: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    "rank": pl.Int32(),  # 1 = the best item
    ITEM_ID: pl.String(),
    "conditioned_return": pl.Float32(),  # the return-to-go the chosen candidate's items were conditioned on
    "chosen_history_length": pl.Int32(),  # w*, the steps the stitched search kept
    "model": pl.String(),  # the registered version or the checkpoint's content hash
    "generated_at": TIMESTAMP_DTYPE,
}
"""One row per recommended item, sorted by user then rank: the k best items of each user."""


def score_histories(
    recommender: Recommender, histories: pl.DataFrame, k: int, model: str, generated_at: dt.datetime
) -> pl.DataFrame:
    """The top-``k`` rows (``RECOMMENDATION_SCHEMA``) of every user in ``histories`` (``LoggedHistories.frame``),
    labelled ``model`` and ``generated_at``. A user with fewer than ``k`` unseen items gets that many rows."""
    pieces = []
    for start in range(0, histories.height, CHUNK_USERS):
        chunk = histories.slice(start, CHUNK_USERS)
        contexts = [
            _context(recommender, items, feedback, seen)
            for items, feedback, seen in chunk.select("items", "feedback", "seen").iter_rows()
        ]
        answers = [recommender.answer(decision) for decision in recommender.decide(contexts, k)]
        counts = [len(answer["items"]) for answer in answers]
        pieces.append(
            pl.DataFrame(
                {
                    USER_ID: np.repeat(chunk[USER_ID].to_numpy(), counts),
                    "rank": np.concatenate([np.arange(1, count + 1) for count in counts]),
                    ITEM_ID: np.concatenate([answer["items"] for answer in answers]).astype(str),
                    "conditioned_return": np.repeat([answer["conditioned_return"] for answer in answers], counts),
                    "chosen_history_length": np.repeat([a["chosen_history_length"] for a in answers], counts),
                    "model": model,
                    "generated_at": generated_at,
                }
            ).cast(RECOMMENDATION_SCHEMA)
        )
        log.info("scored %d of %d users", start + chunk.height, histories.height)
    return pl.concat(pieces) if pieces else pl.DataFrame(schema=RECOMMENDATION_SCHEMA)


def _context(recommender: Recommender, items: list[int], feedback: list[float], seen: list[int]) -> EpisodeContext:
    """The search context of one user's logged events: ``items[0]`` starts the episode, ``items[1:]`` are its
    actions with ``feedback[1:]``; every ``seen`` item is forbidden."""
    context = recommender.indexed_context(
        np.asarray(items[1:], dtype=np.int64), np.asarray(feedback[1:], dtype=np.float64), False, items[0]
    )
    context.forbidden = np.zeros(recommender.model.shape.items, dtype=bool)
    context.forbidden[np.asarray(seen, dtype=np.int64)] = True
    return context
