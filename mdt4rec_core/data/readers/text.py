"""Delimited text files read line by line, so that a malformed row is quarantined instead of failing the file.

Lines are decoded lossily (invalid UTF-8 becomes U+FFFD and the row is quarantined), split on a literal separator
(or runs of whitespace), and checked for their field count. Lines holding a double quote go through Python's csv
parser, so quoted fields may contain the separator. A last line without a line terminator is quarantined as
truncated: a file cut mid-line would otherwise store a half-written value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from mdt4rec_core.data.readers.raw import ERROR, RAW, ROW, RawRows

WHITESPACE = " "
_LINE = "_line"
_FIELDS = "_fields"
_REPLACEMENT_CHARACTER = "\ufffd"


@dataclass(frozen=True)
class TextLayout:
    """How a delimited text format lays out its fields.

    ``separator``: a literal separator, or ``" "`` for runs of whitespace. ``header``: ``plain`` (first line names
    the columns), ``recbole`` (names carry a ``:type`` suffix to strip) or ``none`` (``names`` gives them).
    ``quoting``: fields may be double-quoted (CSV); otherwise quotes are ordinary characters.
    """

    separator: str
    header: Literal["plain", "recbole", "none"]
    names: tuple[str, ...] = ()
    quoting: bool = False


def read_text_rows(path: Path, layout: TextLayout) -> RawRows:
    """Read ``path`` into RawRows: one row per non-blank line after the header."""
    lines = _read_lines(path)
    file = str(path)
    if layout.header == "none":
        names = list(layout.names)
        body = lines
    else:
        if lines.height == 0:
            return RawRows(file, _empty_rows([]), "empty file: no header line")
        header_line = lines[_LINE][0]
        names = _header_names(header_line, layout)
        body = lines.slice(1)
    body = body.filter(pl.col(_LINE).str.len_bytes() > 0)
    if body.height == 0:
        return RawRows(file, _empty_rows(names))
    fields = _split_fields(body, layout)
    count = fields.list.len()
    structural_error = (
        pl.when(pl.col(_LINE).str.contains(_REPLACEMENT_CHARACTER, literal=True))
        .then(pl.lit("row is not valid UTF-8"))
        .when(pl.col("_truncated"))
        .then(pl.lit("last line has no line terminator (file truncated?)"))
        .when(count != len(names))
        .then(pl.format(f"expected {len(names)} fields, found {{}}", count))
    )
    frame = (
        body.with_columns(fields.alias(_FIELDS))
        .with_columns(structural_error.alias(ERROR))
        .select(
            pl.col(ROW),
            pl.col(_LINE).alias(RAW),
            pl.col(ERROR),
            *[pl.col(_FIELDS).list.get(i, null_on_oob=True).alias(name) for i, name in enumerate(names)],
        )
    )
    return RawRows(file, frame)


def _read_lines(path: Path) -> pl.DataFrame:
    """Columns ``_row`` (1-based line number), ``_line`` (text, CR stripped, null for blank) and ``_truncated``."""
    if path.stat().st_size == 0:
        return pl.DataFrame(schema={ROW: pl.Int64, _LINE: pl.String, "_truncated": pl.Boolean})
    lines = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=[_LINE],
        schema={_LINE: pl.String},
        encoding="utf8-lossy",
        raise_if_empty=False,
    )
    ends_with_newline = _last_byte(path) == b"\n"
    last = lines.height - 1
    return lines.with_row_index(ROW, offset=1).select(
        pl.col(ROW).cast(pl.Int64),
        pl.col(_LINE).fill_null("").str.strip_suffix("\r"),
        ((pl.col(ROW) == last + 1) & (not ends_with_newline)).alias("_truncated"),
    )


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1)


def _header_names(header_line: str, layout: TextLayout) -> list[str]:
    if layout.quoting:
        names = next(csv.reader([header_line], delimiter=layout.separator))
    elif layout.separator == WHITESPACE:
        names = header_line.split()
    else:
        names = header_line.split(layout.separator)
    names = [n.strip().lstrip("\ufeff") for n in names]
    if layout.header == "recbole":
        names = [n.split(":", 1)[0] for n in names]
    return names


def _split_fields(body: pl.DataFrame, layout: TextLayout) -> pl.Series:
    line = body[_LINE]
    if layout.separator == WHITESPACE:
        return line.str.strip_chars().str.replace_all(r"\s+", " ").str.split(" ")
    fields = line.str.split(layout.separator)
    if not layout.quoting:
        return fields
    quoted = line.str.contains('"', literal=True)
    if not quoted.any():
        return fields
    parsed: list[list[str] | None] = [None] * len(line)
    for position, text in zip(quoted.arg_true().to_list(), line.filter(quoted).to_list(), strict=True):
        parsed[position] = next(csv.reader([text], delimiter=layout.separator), [])
    reparsed = pl.Series(parsed, dtype=pl.List(pl.String))
    return pl.select(pl.when(quoted).then(reparsed).otherwise(fields)).to_series().alias(fields.name)


def _empty_rows(names: list[str]) -> pl.DataFrame:
    schema = {ROW: pl.Int64, RAW: pl.String, ERROR: pl.String, **{n: pl.String for n in names}}
    return pl.DataFrame(schema=schema)
