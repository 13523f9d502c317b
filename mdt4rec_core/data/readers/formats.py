"""The raw formats the pipeline reads, and how each maps onto the canonical schema by default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mdt4rec_core.config import ReaderFormat, TimestampUnit
from mdt4rec_core.data.readers.matrix import read_matrix_rows
from mdt4rec_core.data.readers.raw import RawRows
from mdt4rec_core.data.readers.records import read_ndjson_rows, read_parquet_rows
from mdt4rec_core.data.readers.text import WHITESPACE, TextLayout, read_text_rows


@dataclass(frozen=True)
class FormatSpec:
    """A raw format: its reader, the interaction files it looks for in a folder (in time order), and its defaults.

    ``columns`` maps canonical names to this format's column names; ``timestamp_unit`` is its unit unless the
    dataset sets one. ``ordinal_time``: the format records no time, so events are timed by their position across
    the files (seconds since the epoch, in file order).
    """

    read: Callable[[Path], RawRows]
    files: tuple[str, ...]
    columns: dict[str, str] = field(default_factory=dict)
    timestamp_unit: TimestampUnit = "s"
    ordinal_time: bool = False


def _text(separator: str, header: str, *names: str, quoting: bool = False) -> Callable[[Path], RawRows]:
    return partial(read_text_rows, layout=TextLayout(separator, header, names, quoting))  # type: ignore[arg-type]


_RATING_COLUMNS = {"feedback": "rating"}
_YAHOO_COLUMNS = {"user_id": "user", "item_id": "item", "feedback": "rating"}

FORMATS: dict[ReaderFormat, FormatSpec] = {
    "recbole": FormatSpec(_text("\t", "recbole"), ("*.inter",), _RATING_COLUMNS),
    "movielens-dat": FormatSpec(
        _text("::", "none", "user_id", "item_id", "rating", "timestamp"), ("ratings.dat",), _RATING_COLUMNS
    ),
    "movielens-udata": FormatSpec(
        _text("\t", "none", "user_id", "item_id", "rating", "timestamp"), ("u.data",), _RATING_COLUMNS
    ),
    "csv": FormatSpec(_text(",", "plain", quoting=True), ("*.csv",)),
    "tsv": FormatSpec(_text("\t", "plain"), ("*.tsv",)),
    "ndjson": FormatSpec(read_ndjson_rows, ("*.ndjson", "*.jsonl")),
    "parquet": FormatSpec(read_parquet_rows, ("*.parquet",)),
    "coat": FormatSpec(read_matrix_rows, ("train.ascii", "test.ascii"), _YAHOO_COLUMNS, ordinal_time=True),
    "yahoo-r3": FormatSpec(
        _text(WHITESPACE, "none", "user", "item", "rating"),
        ("ydata-ymusic-rating-study-v1_0-train.txt", "ydata-ymusic-rating-study-v1_0-test.txt"),
        _YAHOO_COLUMNS,
        ordinal_time=True,
    ),
    "kuairec": FormatSpec(
        _text(",", "plain", quoting=True),
        ("big_matrix.csv", "small_matrix.csv"),
        {"item_id": "video_id", "feedback": "watch_ratio"},
    ),
    "kuairand-pure": FormatSpec(
        _text(",", "plain", quoting=True),
        ("log_standard_4_08_to_4_21_pure.csv",),
        {"item_id": "video_id", "timestamp": "time_ms", "feedback": "is_click"},
        timestamp_unit="ms",
    ),
}
