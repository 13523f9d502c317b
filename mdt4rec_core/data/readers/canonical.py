"""Typing raw rows into the canonical interaction schema; every row is either accepted or quarantined with a reason."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mdt4rec_core.config import TimestampUnit
from mdt4rec_core.data.readers.raw import ERROR, RAW, ROW, RawRows
from mdt4rec_core.data.schema import (
    CANONICAL_COLUMNS,
    FEEDBACK,
    INTERACTION_SCHEMA,
    ITEM_ID,
    QUARANTINE_SCHEMA,
    SOURCE_FILE,
    SOURCE_ROW,
    TIMESTAMP,
    TIMESTAMP_DTYPE,
    USER_ID,
)

_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)
_FIELD, _REASON = "_field", "_reason"
_RAW_PREFIX = "_source_"
_EPOCH_PATTERN = r"^\s*[+-]?\d+(\.\d*)?\s*$"


@dataclass(frozen=True)
class ParsedRows:
    """Typed rows of one file.

    ``accepted`` follows INTERACTION_SCHEMA (plus extra source columns as strings); ``quarantined``
    QUARANTINE_SCHEMA.
    """

    accepted: pl.DataFrame
    quarantined: pl.DataFrame


def parse_rows(rows: RawRows, columns: dict[str, str], timestamp_unit: TimestampUnit) -> ParsedRows:
    """Type ``rows`` into canonical columns using ``columns`` (canonical name -> source column name)."""
    source = {name: columns.get(name, name) for name in CANONICAL_COLUMNS}
    frame = rows.frame
    file_error = rows.file_error or _missing_columns_error(frame, source)
    if file_error:
        quarantined = frame.select(
            pl.lit(rows.file).alias("file"),
            pl.col(ROW).alias("row"),
            pl.lit("file").alias("field"),
            pl.lit(file_error).alias("reason"),
            pl.col(RAW).alias("raw"),
        )
        return ParsedRows(_empty_accepted(), quarantined.cast(QUARANTINE_SCHEMA))

    extras = [c for c in frame.columns if c not in (ROW, RAW, ERROR) and c not in source.values()]
    raw = {name: _RAW_PREFIX + name for name in CANONICAL_COLUMNS}
    frame = frame.rename({source[name]: raw[name] for name in CANONICAL_COLUMNS})
    typed = frame.with_columns(
        _clean_id(raw[USER_ID]).alias(USER_ID),
        _clean_id(raw[ITEM_ID]).alias(ITEM_ID),
        _parse_timestamp(
            raw[TIMESTAMP], frame.schema[raw[TIMESTAMP]], timestamp_unit, _all_epoch(frame[raw[TIMESTAMP]])
        ).alias(TIMESTAMP),
        _as_float(raw[FEEDBACK], frame.schema[raw[FEEDBACK]]).alias(FEEDBACK),
    )
    checks = _checks(raw)
    typed = typed.with_columns(_first_match(checks, of_field=True).alias(_FIELD))
    accepted = typed.filter(pl.col(_FIELD).is_null()).select(
        pl.col(USER_ID),
        pl.col(ITEM_ID),
        pl.col(TIMESTAMP),
        pl.col(FEEDBACK),
        pl.lit(rows.file).alias(SOURCE_FILE),
        pl.col(ROW).alias(SOURCE_ROW),
        *[pl.col(c).cast(pl.String) for c in extras],
    )
    quarantined = (
        typed.filter(pl.col(_FIELD).is_not_null())
        .with_columns(_first_match(checks, of_field=False).alias(_REASON))
        .select(
            pl.lit(rows.file).alias("file"),
            pl.col(ROW).alias("row"),
            pl.col(_FIELD).alias("field"),
            pl.col(_REASON).alias("reason"),
            pl.col(RAW).alias("raw"),
        )
    )
    return ParsedRows(accepted, quarantined.cast(QUARANTINE_SCHEMA))


def _missing_columns_error(frame: pl.DataFrame, source: dict[str, str]) -> str | None:
    missing = [
        f"{src!r} ({name})" if src != name else repr(src) for name, src in source.items() if src not in frame.columns
    ]
    if not missing:
        return None
    present = [c for c in frame.columns if not c.startswith("_")]
    return f"missing required column {', '.join(missing)}; columns present: {', '.join(present) or 'none'}"


def _clean_id(column: str) -> pl.Expr:
    value = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.when(value.str.len_bytes() > 0).then(value)


def _as_float(column: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_numeric():
        return pl.col(column).cast(pl.Float64)
    return pl.col(column).str.strip_chars().cast(pl.Float64, strict=False)


def _parse_timestamp(column: str, dtype: pl.DataType, unit: TimestampUnit, all_numeric: bool) -> pl.Expr:
    """Epoch numbers (seconds, or milliseconds when ``unit`` is ms) or ISO-8601 strings -> UTC microseconds.

    ``all_numeric``: every value is an epoch number, so the ISO-8601 parsers need not run.
    """
    scale = 1_000 if unit == "ms" else 1_000_000
    if isinstance(dtype, pl.Datetime):
        value = pl.col(column)
        value = value.dt.replace_time_zone("UTC") if dtype.time_zone is None else value.dt.convert_time_zone("UTC")
        return value.cast(TIMESTAMP_DTYPE)
    if dtype.is_numeric():
        return _from_epoch(pl.col(column).cast(pl.Float64), scale)
    text = pl.col(column).str.strip_chars()
    epoch = _from_epoch(text.cast(pl.Float64, strict=False), scale)
    if all_numeric:
        return epoch
    iso = text.str.replace(r"[Zz]$", "+00:00")
    parsed = pl.coalesce(
        [iso.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us") for fmt in _ISO_FORMATS]
    )
    return pl.when(text.str.contains(_EPOCH_PATTERN)).then(epoch).otherwise(parsed)


def _all_epoch(values: pl.Series) -> bool:
    if values.dtype != pl.String:
        return False
    return bool(values.drop_nulls().str.contains(_EPOCH_PATTERN).all())


def _from_epoch(number: pl.Expr, micro_per_unit: int) -> pl.Expr:
    micros = (number * micro_per_unit).round(0)
    in_range = number.is_finite() & (micros.abs() < 2**62)
    return pl.when(in_range).then(micros.cast(pl.Int64, strict=False)).cast(TIMESTAMP_DTYPE)


def _checks(raw: dict[str, str]) -> list[tuple[pl.Expr, str, pl.Expr]]:
    """(condition, field, reason) per problem, in the order they are reported; the first that holds wins.

    ``raw`` names the untyped source column of each canonical field.
    """
    feedback, raw_feedback = pl.col(FEEDBACK), pl.col(raw[FEEDBACK]).cast(pl.String)
    raw_timestamp = pl.col(raw[TIMESTAMP]).cast(pl.String)
    return [
        (pl.col(ERROR).is_not_null(), "row", pl.col(ERROR)),
        (pl.col(USER_ID).is_null(), USER_ID, pl.lit("missing value")),
        (pl.col(ITEM_ID).is_null(), ITEM_ID, pl.lit("missing value")),
        (raw_timestamp.is_null() | (raw_timestamp.str.strip_chars() == ""), TIMESTAMP, pl.lit("missing value")),
        (pl.col(TIMESTAMP).is_null(), TIMESTAMP, pl.format("unparsable timestamp '{}'", raw_timestamp)),
        (raw_feedback.is_null() | (raw_feedback.str.strip_chars() == ""), FEEDBACK, pl.lit("missing value")),
        (feedback.is_null(), FEEDBACK, pl.format("not a number: '{}'", raw_feedback)),
        (feedback.is_nan(), FEEDBACK, pl.lit("NaN")),
        (feedback.is_infinite(), FEEDBACK, pl.format("infinite: '{}'", raw_feedback)),
        (feedback < 0, FEEDBACK, pl.format("negative: {}", feedback)),
    ]


def _first_match(checks: list[tuple[pl.Expr, str, pl.Expr]], of_field: bool) -> pl.Expr:
    """The field (``of_field``) or the reason of the first check that holds; null when none does."""
    chain = None
    for condition, field, reason in checks:
        value = pl.lit(field) if of_field else reason
        chain = pl.when(condition).then(value) if chain is None else chain.when(condition).then(value)
    assert chain is not None
    return chain


def _empty_accepted() -> pl.DataFrame:
    return pl.DataFrame(schema=INTERACTION_SCHEMA)
