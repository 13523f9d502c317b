"""Delimited text files read line by line, so that a malformed row is quarantined instead of failing the file.

Lines end with LF (a CR before it is dropped), or with CR in a file that holds no LF at all. They are decoded
lossily (invalid UTF-8 becomes U+FFFD and the row is quarantined), split on a literal separator (or runs of
whitespace), and checked for their field count; a row holding an ASCII control character other than tab is
quarantined. Lines holding a double quote go through Python's csv parser, so quoted fields may contain the
separator. A last line without a line terminator is quarantined as truncated: a file cut mid-line would otherwise
store a half-written value. A header whose names repeat, hold a control character or use the pipeline's internal
prefix makes the file unusable: its rows are all quarantined with that reason.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from mdt4rec_core.data.readers.raw import CONTROL_BYTES, ERROR, RAW, ROW, RawRows, column_names_problem
from mdt4rec_core.errors import InputError, describe_os_error

WHITESPACE = " "
_LINE = "_line"
_FIELDS = "_fields"
_TRUNCATED = "_truncated"
_REPLACEMENT_CHARACTER = "\ufffd"
_LINE_SPLITTERS = [chr(code) for code in (*range(0x1F, 0x0D, -1), 0x0C, 0x0B, *range(0x08, -1, -1), 0x7F)]
"""Bytes one of which, absent from a file, lets Polars read the file as one column of whole lines."""


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
    file = str(path)
    data = _read_bytes(path)
    splitter = next((byte for byte in _LINE_SPLITTERS if byte.encode() not in data), None)
    if splitter is None:
        return RawRows(file, _empty_rows([]), "not a text file: it holds every ASCII control character")
    lines = _read_lines(data, splitter)
    if layout.header == "none":
        names, body = list(layout.names), lines
    elif lines.height == 0:
        return RawRows(file, _empty_rows([]), "empty file: no header line")
    else:
        names, body = _header_names(lines[_LINE][0], layout), lines.slice(1)
    body = body.filter(pl.col(_LINE).str.len_bytes() > 0)
    header_problem = column_names_problem(names)
    if header_problem:
        unsplit = body.select(ROW, pl.col(_LINE).alias(RAW), pl.lit(None, pl.String).alias(ERROR))
        return RawRows(file, unsplit, header_problem)
    if body.height == 0:
        return RawRows(file, _empty_rows(names))
    fields = _split_fields(body, layout)
    frame = (
        body.with_columns(fields.alias(_FIELDS))
        .with_columns(_structural_error(fields.list.len(), len(names)).alias(ERROR))
        .select(
            pl.col(ROW),
            pl.col(_LINE).alias(RAW),
            pl.col(ERROR),
            *[pl.col(_FIELDS).list.get(i, null_on_oob=True).alias(name) for i, name in enumerate(names)],
        )
    )
    return RawRows(file, frame)


def _structural_error(count: pl.Series, expected: int) -> pl.Expr:
    """Why a line cannot be read as a row (its fields counted in ``count``), or null."""
    control = pl.col(_LINE).str.extract(f"({CONTROL_BYTES})", 1)
    return (
        pl.when(pl.col(_LINE).str.contains(_REPLACEMENT_CHARACTER, literal=True))
        .then(pl.lit("row is not valid UTF-8"))
        .when(control.is_not_null())
        .then(pl.format("control character 0x{} in the row", control.str.encode("hex").str.to_uppercase()))
        .when(pl.col(_TRUNCATED))
        .then(pl.lit("last line has no line terminator (file truncated?)"))
        .when(count != expected)
        .then(pl.format(f"expected {expected} fields, found {{}}", count))
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({describe_os_error(exc)})") from None


def _read_lines(data: bytes, splitter: str) -> pl.DataFrame:
    """Columns ``ROW`` (1-based line number), ``_line`` (text, CR before LF dropped, "" for blank) and
    ``_truncated``. ``splitter``: a byte absent from ``data``, so that Polars never splits a line into fields."""
    if not data:
        return pl.DataFrame(schema={ROW: pl.Int64, _LINE: pl.String, _TRUNCATED: pl.Boolean})
    terminator = "\r" if b"\n" not in data and b"\r" in data else "\n"
    lines = pl.read_csv(
        data,
        has_header=False,
        separator=splitter,
        quote_char=None,
        eol_char=terminator,
        new_columns=[_LINE],
        schema={_LINE: pl.String},
        encoding="utf8-lossy",
        raise_if_empty=False,
    )
    truncated = not data.endswith(terminator.encode())
    return lines.with_row_index(ROW, offset=1).select(
        pl.col(ROW).cast(pl.Int64),
        pl.col(_LINE).fill_null("").str.strip_suffix("\r"),
        ((pl.col(ROW) == lines.height) & truncated).alias(_TRUNCATED),
    )


def _header_names(header_line: str, layout: TextLayout) -> list[str]:
    if layout.quoting:
        names = _csv_fields(header_line, layout.separator)
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
        parsed[position] = _csv_fields(text, layout.separator)
    reparsed = pl.Series(parsed, dtype=pl.List(pl.String))
    return pl.select(pl.when(quoted).then(reparsed).otherwise(fields)).to_series().alias(fields.name)


def _csv_fields(line: str, separator: str) -> list[str]:
    """The fields of a CSV line with quoting; a line the csv parser refuses (a bare CR inside a field: the row is
    quarantined for its control character) is split on ``separator`` alone."""
    try:
        return next(csv.reader([line], delimiter=separator), [])
    except csv.Error:
        return line.split(separator)


def _empty_rows(names: list[str]) -> pl.DataFrame:
    schema = {ROW: pl.Int64, RAW: pl.String, ERROR: pl.String, **{n: pl.String for n in names}}
    return pl.DataFrame(schema=schema)
