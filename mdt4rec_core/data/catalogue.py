"""The item catalogue (item ids <-> contiguous indices) and the user split, shared by trajectories, environments and
models."""

from __future__ import annotations

import polars as pl

from mdt4rec_core.data.schema import ITEM_ID


def item_catalogue(items: pl.Series) -> pl.DataFrame:
    """``item_id`` -> ``index`` (Int32), ids sorted so that the same items always get the same indices."""
    return (
        items.unique().sort().to_frame(ITEM_ID).with_row_index("index").select(ITEM_ID, pl.col("index").cast(pl.Int32))
    )


HELD_OUT_FRACTION = 0.2


def held_out(user_id: pl.Expr) -> pl.Expr:
    """True for the users the strict protocol holds out for evaluation: a stable hash of the id, not the row order."""
    return (user_id.hash(seed=7) % 1000) < int(HELD_OUT_FRACTION * 1000)
