"""The item catalogue: item ids <-> contiguous indices shared by trajectories, environments and models."""

from __future__ import annotations

import polars as pl

from mdt4rec_core.data.schema import ITEM_ID


def item_catalogue(items: pl.Series) -> pl.DataFrame:
    """``item_id`` -> ``index`` (Int32), ids sorted so that the same items always get the same indices."""
    return (
        items.unique().sort().to_frame(ITEM_ID).with_row_index("index").select(ITEM_ID, pl.col("index").cast(pl.Int32))
    )
