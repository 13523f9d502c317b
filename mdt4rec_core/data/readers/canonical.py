"""Typing raw rows into the canonical interaction schema; every row is either accepted or quarantined with a reason.

A timestamp is accepted between 1970-01-01 and ``ParseRules.latest``; feedback between 0 and
``ParseRules.feedback_max``. A timestamp unit that puts most of a file's epoch numbers decades away while another
unit does not is an InputError suggesting that unit, raised before any of the file's rows is typed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from mdt4rec_core.config import TimestampUnit
from mdt4rec_core.data.readers.raw import CONTROL_BYTES, ERROR, INTERNAL_PREFIX, RAW, ROW, RawRows
from mdt4rec_core.data.schema import (
    CANONICAL_COLUMNS,
    EARLIEST_TIME,
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
from mdt4rec_core.errors import InputError

_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)
_FIELD, _REASON = f"{INTERNAL_PREFIX}field", f"{INTERNAL_PREFIX}reason"
_RAW_PREFIX = f"{INTERNAL_PREFIX}source_"
_EPOCH_PATTERN = r"^\s*[+-]?\d+(\.\d*)?\s*$"
_MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "iso": "ISO-8601 text"}
PLAUSIBLE_SINCE = dt.datetime(1980, 1, 1, tzinfo=dt.UTC)
"""A unit is suspect when it puts most epoch numbers before this (or after ``ParseRules.latest``)."""


@dataclass(frozen=True)
class ParseRules:
    """How a source's values are typed and which are accepted.

    ``timestamp_unit``: what an epoch number counts (``iso``: epoch numbers are refused; ISO-8601 text is read in
    every unit). ``latest``: the latest time accepted (None: no bound and no unit check, for formats that time
    events by their position). ``feedback_max``: the largest feedback accepted.
    """

    timestamp_unit: TimestampUnit
    latest: dt.datetime | None
    feedback_max: float


@dataclass(frozen=True)
class ParsedRows:
    """Typed rows of one file.

    ``accepted`` follows INTERACTION_SCHEMA (plus extra source columns as strings); ``quarantined``
    QUARANTINE_SCHEMA.
    """

    accepted: pl.DataFrame
    quarantined: pl.DataFrame


def parse_rows(rows: RawRows, columns: dict[str, str], rules: ParseRules) -> ParsedRows:
    """Type ``rows`` into canonical columns using ``columns`` (canonical name -> source column name)."""
    source = {name: columns.get(name, name) for name in CANONICAL_COLUMNS}
    frame = rows.frame
    file_error = rows.file_error or _missing_columns_error(frame, source) or _clashing_columns_error(frame, source)
    if file_error:
        return ParsedRows(_empty_accepted(), _file_rows(rows, file_error))
    _check_timestamp_unit(rows.file, frame.filter(pl.col(ERROR).is_null()).select(ROW, source[TIMESTAMP]), rules)

    extras = [c for c in frame.columns if c not in (ROW, RAW, ERROR) and c not in source.values()]
    raw = {name: _RAW_PREFIX + name for name in CANONICAL_COLUMNS}
    frame = frame.with_columns(pl.col(source[name]).alias(raw[name]) for name in CANONICAL_COLUMNS)
    raw_time = frame[raw[TIMESTAMP]]
    typed = frame.with_columns(
        _clean_id(raw[USER_ID]).alias(USER_ID),
        _clean_id(raw[ITEM_ID]).alias(ITEM_ID),
        _parse_timestamp(raw[TIMESTAMP], raw_time.dtype, rules.timestamp_unit, _all_epoch(raw_time)).alias(TIMESTAMP),
        _as_float(raw[FEEDBACK], frame.schema[raw[FEEDBACK]]).alias(FEEDBACK),
    )
    checks = _checks(raw, rules, raw_time.dtype.is_numeric())
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


def _check_timestamp_unit(file: str, times: pl.DataFrame, rules: ParseRules) -> None:
    """Raise InputError when ``rules.timestamp_unit`` puts most timestamps of ``times`` (columns ``ROW`` and the raw
    timestamp) outside PLAUSIBLE_SINCE .. ``rules.latest`` while another unit puts most inside; the message names the
    file, the first such row and the unit to set. ISO-8601 text fits every unit; epoch numbers fit no unit in iso."""
    if rules.latest is None:
        return
    epochs = _epoch_numbers(times)
    given = times.height - times[times.columns[1]].null_count()
    since, until = PLAUSIBLE_SINCE.timestamp(), rules.latest.timestamp()
    fits = {u: (pl.col("number") * (micros / 1e6)).is_between(since, until) for u, micros in _MICROS_PER_UNIT.items()}
    outside = {u: epochs.filter(~fit) for u, fit in fits.items()} | {"iso": epochs}
    unit = rules.timestamp_unit
    best = min(outside, key=lambda u: outside[u].height)
    if outside[unit].height * 2 <= given or outside[best].height * 2 >= given:
        return
    first = outside[unit].row(0, named=True)
    problem = (
        "are epoch numbers, refused by timestamp_unit iso"
        if unit == "iso"
        else f"fall outside {PLAUSIBLE_SINCE:%Y-%m-%d}..{rules.latest:%Y-%m-%d} read as {_UNIT_NAMES[unit]}"
    )
    raise InputError(
        f"{file}: row {first[ROW]}, field timestamp: {outside[unit].height:,} of {given:,} timestamps "
        f"(e.g. '{first['text']}') {problem}; they look like {_UNIT_NAMES[best]}: set timestamp_unit: {best} "
        f"(in the dataset's YAML, or --set ingest.timestamp_unit={best})"
    )


def _epoch_numbers(times: pl.DataFrame) -> pl.DataFrame:
    """The finite epoch numbers among the raw timestamps: columns ``ROW``, ``text`` and ``number``."""
    value = pl.col(times.columns[1])
    dtype = times.schema[times.columns[1]]
    if dtype.is_numeric():
        number, looks_epoch = value.cast(pl.Float64), pl.lit(True)
    elif dtype == pl.String:
        number, looks_epoch = value.str.strip_chars().cast(pl.Float64, strict=False), value.str.contains(_EPOCH_PATTERN)
    else:
        return pl.DataFrame(schema={ROW: pl.Int64, "text": pl.String, "number": pl.Float64})
    return (
        times.filter(looks_epoch)
        .select(ROW, value.cast(pl.String).alias("text"), number.alias("number"))
        .filter(pl.col("number").is_finite())
    )


def _file_rows(rows: RawRows, file_error: str) -> pl.DataFrame:
    """Every row of a file that cannot be used, quarantined with the file's problem."""
    return rows.frame.select(
        pl.lit(rows.file).alias("file"),
        pl.col(ROW).alias("row"),
        pl.lit("file").alias("field"),
        pl.lit(file_error).alias("reason"),
        pl.col(RAW).alias("raw"),
    ).cast(QUARANTINE_SCHEMA)


def _missing_columns_error(frame: pl.DataFrame, source: dict[str, str]) -> str | None:
    missing = [
        f"{src!r} ({name})" if src != name else repr(src) for name, src in source.items() if src not in frame.columns
    ]
    if not missing:
        return None
    present = [c for c in frame.columns if c not in (ROW, RAW, ERROR)]
    return f"missing required column {', '.join(missing)}; columns present: {', '.join(present) or 'none'}"


def _clashing_columns_error(frame: pl.DataFrame, source: dict[str, str]) -> str | None:
    """A source column that is not read as a canonical field but carries the name of a stored column."""
    stored = (*CANONICAL_COLUMNS, SOURCE_FILE, SOURCE_ROW)
    clashing = [c for c in frame.columns if c in stored and c not in source.values()]
    if not clashing:
        return None
    return (
        f"unusable header: column {clashing[0]!r} would clash with the stored column of that name: rename it, "
        "or map it onto a field with columns:"
    )


def _text(column: str, dtype: pl.DataType) -> pl.Expr:
    return pl.col(column) if dtype == pl.String else pl.col(column).cast(pl.String)


def _clean_id(column: str) -> pl.Expr:
    value = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.when(value.str.len_bytes() > 0).then(value)


def _as_float(column: str, dtype: pl.DataType) -> pl.Expr:
    if dtype.is_numeric() or dtype == pl.Boolean:
        return pl.col(column).cast(pl.Float64)
    return _text(column, dtype).str.strip_chars().cast(pl.Float64, strict=False)


def _parse_timestamp(column: str, dtype: pl.DataType, unit: TimestampUnit, all_numeric: bool) -> pl.Expr:
    """Epoch numbers counted in ``unit`` or ISO-8601 text -> UTC microseconds (null when neither).

    ``all_numeric``: every value is an epoch number, so the ISO-8601 parsers need not run.
    """
    if isinstance(dtype, pl.Datetime):
        value = pl.col(column)
        value = value.dt.replace_time_zone("UTC") if dtype.time_zone is None else value.dt.convert_time_zone("UTC")
        return value.cast(TIMESTAMP_DTYPE)
    if dtype.is_numeric():
        return _from_epoch(pl.col(column).cast(pl.Float64), unit)
    text = _text(column, dtype).str.strip_chars()
    epoch = _from_epoch(text.cast(pl.Float64, strict=False), unit)
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


def _from_epoch(number: pl.Expr, unit: TimestampUnit) -> pl.Expr:
    """Epoch ``number`` counted in ``unit`` as a time; null when ``unit`` is iso or the time is out of range."""
    if unit == "iso":
        return pl.lit(None, dtype=TIMESTAMP_DTYPE)
    micros = (number * _MICROS_PER_UNIT[unit]).round(0)
    in_range = number.is_finite() & (micros.abs() < 2**62)
    return pl.when(in_range).then(micros.cast(pl.Int64, strict=False)).cast(TIMESTAMP_DTYPE)


Check = tuple[pl.Expr, str, pl.Expr]


def _checks(raw: dict[str, str], rules: ParseRules, numeric_time: bool) -> list[Check]:
    """(condition, field, reason) per problem, in the order they are reported; the first that holds wins.

    ``raw`` names the untyped source column of each canonical field; ``numeric_time``: the source stores timestamps
    as numbers.
    """
    return [
        (pl.col(ERROR).is_not_null(), "row", pl.col(ERROR)),
        _id_check(USER_ID),
        _id_check(ITEM_ID),
        *_timestamp_checks(pl.col(raw[TIMESTAMP]).cast(pl.String), rules, numeric_time),
        *_feedback_checks(pl.col(raw[FEEDBACK]).cast(pl.String), rules),
    ]


def _id_check(name: str) -> Check:
    """A missing id, or one holding a control character."""
    control = pl.col(name).str.extract(f"({CONTROL_BYTES})", 1)
    reason = (
        pl.when(pl.col(name).is_null())
        .then(pl.lit("missing value"))
        .otherwise(pl.format("control character 0x{} in the value", control.str.encode("hex").str.to_uppercase()))
    )
    return pl.col(name).is_null() | control.is_not_null(), name, reason


def _timestamp_checks(raw_time: pl.Expr, rules: ParseRules, numeric_time: bool) -> list[Check]:
    time = pl.col(TIMESTAMP)
    epoch_number = pl.lit(numeric_time) | raw_time.str.contains(_EPOCH_PATTERN)
    checks = [
        (raw_time.is_null() | (raw_time.str.strip_chars() == ""), TIMESTAMP, pl.lit("missing value")),
        (
            time.is_null() & epoch_number & pl.lit(rules.timestamp_unit == "iso"),
            TIMESTAMP,
            pl.format("an epoch number, but timestamp_unit is iso: '{}'", raw_time),
        ),
        (time.is_null() & epoch_number, TIMESTAMP, pl.format("out of range: '{}'", raw_time)),
        (time.is_null(), TIMESTAMP, pl.format("unparsable timestamp '{}'", raw_time)),
        (time < EARLIEST_TIME, TIMESTAMP, pl.format(f"before {EARLIEST_TIME:%Y-%m-%d}: '{{}}'", raw_time)),
    ]
    if rules.latest is not None:
        after = f"in the future (after {rules.latest:%Y-%m-%d %H:%M:%S} UTC): '{{}}'"
        checks.append((time > rules.latest, TIMESTAMP, pl.format(after, raw_time)))
    return checks


def _feedback_checks(raw_feedback: pl.Expr, rules: ParseRules) -> list[Check]:
    feedback = pl.col(FEEDBACK)
    return [
        (raw_feedback.is_null() | (raw_feedback.str.strip_chars() == ""), FEEDBACK, pl.lit("missing value")),
        (feedback.is_null(), FEEDBACK, pl.format("not a number: '{}'", raw_feedback)),
        (feedback.is_nan(), FEEDBACK, pl.lit("NaN")),
        (feedback.is_infinite(), FEEDBACK, pl.format("infinite: '{}'", raw_feedback)),
        (feedback < 0, FEEDBACK, pl.format("negative: {}", feedback)),
        (
            feedback > rules.feedback_max,
            FEEDBACK,
            pl.format(f"above feedback_max {rules.feedback_max:g}: '{{}}'", raw_feedback),
        ),
    ]


def _first_match(checks: list[Check], of_field: bool) -> pl.Expr:
    """The field (``of_field``) or the reason of the first check that holds; null when none does."""
    chain = None
    for condition, field, reason in checks:
        value = pl.lit(field) if of_field else reason
        chain = pl.when(condition).then(value) if chain is None else chain.when(condition).then(value)
    assert chain is not None
    return chain


def _empty_accepted() -> pl.DataFrame:
    return pl.DataFrame(schema=INTERACTION_SCHEMA)
