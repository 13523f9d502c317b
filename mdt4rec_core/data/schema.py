"""Canonical schemas shared by readers, stores, trajectory building and validation."""

from __future__ import annotations

import datetime as dt

import polars as pl

USER_ID, ITEM_ID, TIMESTAMP, FEEDBACK = "user_id", "item_id", "timestamp", "feedback"
CANONICAL_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, FEEDBACK)
EVENT_KEY = (USER_ID, ITEM_ID, TIMESTAMP)
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"

TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")
EARLIEST_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""No event happens earlier (a negative epoch is a bad value, not 1969)."""
FUTURE_TOLERANCE = dt.timedelta(days=1)
"""How far ahead of the ingesting machine's clock an event may lie (clock skew between machines)."""

INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    ITEM_ID: pl.String(),
    TIMESTAMP: TIMESTAMP_DTYPE,
    FEEDBACK: pl.Float64(),
    SOURCE_FILE: pl.String(),  # the raw file the event came from
    SOURCE_ROW: pl.Int64(),  # its 1-based row in that file
}
"""One row per logged event. Columns a source has beyond these are kept as they are (strings)."""

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),  # source file path
    "row": pl.Int64(),  # 1-based line number in the file (header included); cell index for matrix formats
    "field": pl.String(),  # the field at fault, or "row" when the whole row is malformed
    "reason": pl.String(),
    "raw": pl.String(),  # the row as read (lossily decoded)
}
"""One row per rejected input row, with the reason it was rejected."""

TRAJECTORY_SCHEMA: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    "episode": pl.Int32(),  # per user, 0-based, in time order
    "step": pl.Int32(),  # within the episode, 0-based
    TIMESTAMP: TIMESTAMP_DTYPE,
    "state_items": pl.List(pl.Int32()),  # catalogue indices of the last N actions of the episode, oldest first
    "state_feedback": pl.List(pl.Float32()),  # their rewards, aligned with state_items
    "action": pl.Int32(),  # catalogue index of the item acted on at this step
    FEEDBACK: pl.Float64(),  # raw feedback of the action
    "reward": pl.Float32(),  # feedback min-max normalised to [0, 1] over the dataset
    "return_to_go": pl.Float32(),  # sum of rewards from this step to the end of the episode
    "done": pl.Boolean(),  # true on the last step of the episode
}
"""One row per step of an offline episode."""
