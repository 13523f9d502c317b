"""The common output of every raw-format reader, before parsing into the canonical schema."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import polars as pl

INTERNAL_PREFIX = "_mdt4rec_"
"""Columns the pipeline adds to a source's rows while reading them start with this; no source column may."""

ROW, RAW, ERROR = f"{INTERNAL_PREFIX}row", f"{INTERNAL_PREFIX}raw", f"{INTERNAL_PREFIX}error"
CONTROL_BYTES = r"[\x00-\x08\x0b-\x1f\x7f]"
"""ASCII control characters other than tab and line feed: no delimited field or column name may hold one."""


@dataclass(frozen=True)
class RawRows:
    """Rows of one source file as read, not yet typed.

    ``frame`` holds ``ROW`` (1-based position in the file), ``RAW`` (the row as text, kept for the quarantine),
    ``ERROR`` (a structural problem found while reading, or null) and one column per source field.
    ``file_error`` is set when the file as a whole cannot be used (empty, unusable header, missing a required
    column); its rows are then all quarantined with that reason.
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


def column_names_problem(names: list[str]) -> str | None:
    """Why a source's column names cannot be used (a name given twice, holding a control character, or starting
    with the pipeline's internal prefix), or None when they can."""
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        return f"unusable header: column {repeated[0]!r} appears {names.count(repeated[0])} times"
    for position, name in enumerate(names, start=1):
        if re.search(CONTROL_BYTES, name):
            return f"unusable header: column {position} name {name!r} holds a control character"
        if name.startswith(INTERNAL_PREFIX):
            return f"unusable header: column {name!r} starts with {INTERNAL_PREFIX!r}, reserved for the pipeline"
    return None
