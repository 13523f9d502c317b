"""The common output of every raw-format reader, before parsing into the canonical schema."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

ROW, RAW, ERROR = "_row", "_raw", "_error"


@dataclass(frozen=True)
class RawRows:
    """Rows of one source file as read, not yet typed.

    ``frame`` holds ``_row`` (1-based position in the file), ``_raw`` (the row as text, kept for the quarantine),
    ``_error`` (a structural problem found while reading, or null) and one column per source field.
    ``file_error`` is set when the file as a whole cannot be used (empty, missing a required column); its rows
    are then all quarantined with that reason.
    """

    file: str
    frame: pl.DataFrame
    file_error: str | None = None

    @property
    def rows_read(self) -> int:
        return self.frame.height


def raw_frame(rows: list[int], raws: list[str], errors: list[str | None], fields: dict[str, list]) -> pl.DataFrame:
    """Build a RawRows frame from Python lists (used by the small, non-columnar formats)."""
    return pl.DataFrame(
        {ROW: rows, RAW: raws, ERROR: errors, **fields},
        schema_overrides={ROW: pl.Int64, RAW: pl.String, ERROR: pl.String},
    )
