"""Readers for self-describing formats: NDJSON event logs and Parquet files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from mdt4rec_core.data.readers.raw import ERROR, RAW, ROW, RawRows, column_names_problem, raw_frame
from mdt4rec_core.data.readers.text import TextLayout, read_text_rows

_FLAT_TYPES = (pl.Boolean, pl.String, pl.Categorical, pl.Enum, pl.Date, pl.Datetime, pl.Null)
"""Parquet column types read as values, besides numbers."""


def read_ndjson_rows(path: Path) -> RawRows:
    """One JSON object per line; a line that is not a JSON object is quarantined with the parser's message. A key
    that no column may be named (see ``column_names_problem``) makes the file unusable."""
    lines = read_text_rows(path, TextLayout(separator="\x1e", header="none", names=("_json",)))
    if lines.file_error:
        return lines
    records: list[dict] = []
    errors: list[str | None] = []
    for text, structural in zip(lines.frame[RAW].to_list(), lines.frame[ERROR].to_list(), strict=True):
        record, error = _decode(text)
        records.append(record)
        errors.append(structural or error)
    keys = list(dict.fromkeys(k for r in records for k in r))
    problem = column_names_problem(keys)
    if problem:
        return RawRows(lines.file, lines.frame.select(ROW, RAW, ERROR), problem)
    fields = {k: [_as_text(r.get(k)) for r in records] for k in keys}
    frame = raw_frame(lines.frame[ROW].to_list(), lines.frame[RAW].to_list(), errors, fields)
    return RawRows(lines.file, frame)


def read_parquet_rows(path: Path) -> RawRows:
    """A Parquet file keeps its column types; ``RAW`` is the row rendered as JSON for the quarantine.

    Numbers, booleans, text, dates and date-times are values (dates become date-times, categories text). A file
    that cannot be decoded, or whose columns repeat a name, use a reserved name, nest values (lists, structs) or
    hold another type (binary, durations, times of day) is unusable: its rows are all quarantined with that reason.
    """
    try:
        with pq.ParquetFile(path) as parquet:
            table = parquet.read()
        frame = pl.from_arrow(table.rename_columns(_distinct(table.column_names)))
    except Exception as exc:  # pyarrow raises several types for a corrupt or non-Parquet file
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return RawRows(str(path), raw_frame([], [], [], {}), f"not a readable Parquet file ({detail})")
    assert isinstance(frame, pl.DataFrame)
    problem = column_names_problem(table.column_names) or _unreadable_column(frame)
    rows = frame.select(
        pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(ROW),
        _as_json(frame).alias(RAW),
        pl.lit(None, dtype=pl.String).alias(ERROR),
    )
    if problem:
        return RawRows(str(path), rows, problem)
    return RawRows(str(path), pl.concat([rows, _as_values(frame)], how="horizontal"))


def _distinct(names: list[str]) -> list[str]:
    """``names`` with each repeat suffixed by its occurrence (``a``, ``a#2``), so that Polars can hold them."""
    seen: dict[str, int] = {}
    distinct = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        distinct.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return distinct


def _unreadable_column(frame: pl.DataFrame) -> str | None:
    """Why a column of ``frame`` cannot be read as values (nested, or of another unsupported type), or None."""
    for name, dtype in frame.schema.items():
        if dtype.is_nested():
            return f"column {name!r} is nested ({dtype}): flatten it into plain columns"
        if not (dtype.is_numeric() or isinstance(dtype, _FLAT_TYPES)):
            return f"column {name!r} has type {dtype}, which ingest does not read: store it as text or numbers"
    return None


def _as_values(frame: pl.DataFrame) -> pl.DataFrame:
    """Dates as date-times and categories as text; every other readable column as it is."""
    return frame.with_columns(
        *[pl.col(name).cast(pl.Datetime("us")) for name, dtype in frame.schema.items() if dtype == pl.Date],
        *[
            pl.col(name).cast(pl.String)
            for name, dtype in frame.schema.items()
            if isinstance(dtype, (pl.Categorical, pl.Enum))
        ],
    )


def _as_json(frame: pl.DataFrame) -> pl.Expr:
    """Each row as a JSON object."""
    if frame.width == 0:
        return pl.lit("")
    return pl.struct([_json_ready(name, dtype) for name, dtype in frame.schema.items()]).struct.json_encode()


def _json_ready(name: str, dtype: pl.DataType) -> pl.Expr:
    """Column ``name`` as Polars can write it to JSON: binary values as hex, nested ones holding binary as their
    type's name."""
    if dtype == pl.Binary:
        return pl.col(name).bin.encode("hex")
    if _holds_binary(dtype):
        return pl.lit(f"<{dtype}>").alias(name)
    return pl.col(name)


def _holds_binary(dtype: pl.DataType) -> bool:
    if dtype == pl.Binary:
        return True
    if isinstance(dtype, (pl.List, pl.Array)):
        return _holds_binary(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_holds_binary(field.dtype) for field in dtype.fields)
    return False


def _decode(text: str) -> tuple[dict, str | None]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return {}, "not a JSON object"
    return record, None


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)
