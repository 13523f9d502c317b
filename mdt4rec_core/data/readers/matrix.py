"""Dense rating matrices (Coat's ``train.ascii`` / ``test.ascii``): a line per user, a column per item, 0 = missing."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mdt4rec_core.data.readers.raw import ERROR, RAW, ROW, RawRows
from mdt4rec_core.data.readers.text import TextLayout, read_text_rows

_CELLS = "_cells"


def read_matrix_rows(path: Path) -> RawRows:
    """Each non-zero cell becomes a row with ``user`` = line index and ``item`` = column index, both 0-based.

    A line whose width differs from the first line's is quarantined whole (``_row`` = its line number); a cell that
    is not a number is quarantined as a bad ``rating`` with its line number.
    """
    lines = read_text_rows(path, TextLayout(separator="\x1e", header="none", names=(_CELLS,)))
    frame = lines.frame
    if frame.height == 0:
        return RawRows(lines.file, _empty(), "empty file: no matrix rows")
    frame = frame.with_columns(
        pl.col(_CELLS).str.strip_chars().str.replace_all(r"\s+", " ").str.split(" ").alias(_CELLS),
        (pl.col(ROW) - 1).cast(pl.String).alias("user"),
    )
    width = frame[_CELLS].list.len()
    expected = int(width[0])
    frame = frame.with_columns(
        pl.when(pl.col(ERROR).is_not_null())
        .then(pl.col(ERROR))
        .when(width != expected)
        .then(pl.format(f"expected {expected} columns, found {{}}", width))
        .alias(ERROR)
    )
    broken = frame.filter(pl.col(ERROR).is_not_null()).select(
        ROW, RAW, ERROR, "user", pl.lit(None, pl.String).alias("item"), pl.lit(None, pl.String).alias("rating")
    )
    cells = (
        frame.filter(pl.col(ERROR).is_null())
        .select(ROW, "user", pl.col(_CELLS))
        .explode(_CELLS)
        .with_columns(pl.int_range(pl.len()).over(ROW).cast(pl.String).alias("item"))
        .filter(pl.col(_CELLS) != "0")
        .select(
            ROW,
            pl.format("line {} column {}: {}", ROW, pl.col("item"), pl.col(_CELLS)).alias(RAW),
            pl.lit(None, pl.String).alias(ERROR),
            "user",
            "item",
            pl.col(_CELLS).alias("rating"),
        )
    )
    return RawRows(lines.file, pl.concat([cells, broken], how="vertical_relaxed").sort(ROW, maintain_order=True))


def _empty() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            ROW: pl.Int64,
            RAW: pl.String,
            ERROR: pl.String,
            "user": pl.String,
            "item": pl.String,
            "rating": pl.String,
        }
    )
