"""Readers for self-describing formats: NDJSON event logs and Parquet files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from mdt4rec_core.data.readers.raw import ERROR, RAW, ROW, RawRows, raw_frame
from mdt4rec_core.data.readers.text import TextLayout, read_text_rows


def read_ndjson_rows(path: Path) -> RawRows:
    """One JSON object per line; a line that is not a JSON object is quarantined with the parser's message."""
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
    fields = {k: [_as_text(r.get(k)) for r in records] for k in keys}
    frame = raw_frame(lines.frame[ROW].to_list(), lines.frame[RAW].to_list(), errors, fields)
    return RawRows(lines.file, frame)


def read_parquet_rows(path: Path) -> RawRows:
    """A Parquet file keeps its column types; ``_raw`` is the row rendered as JSON for the quarantine."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt or non-Parquet file
        return RawRows(str(path), raw_frame([], [], [], {}), f"not a readable Parquet file ({exc})")
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(
        pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias(ROW),
        pl.struct(pl.all()).struct.json_encode().alias(RAW) if frame.width else pl.lit("").alias(RAW),
        pl.lit(None, dtype=pl.String).alias(ERROR),
    )
    return RawRows(str(path), frame)


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
