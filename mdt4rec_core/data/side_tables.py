"""Item and user side tables (titles, genres, tags, demographics), read whole: they are small."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mdt4rec_core.config import SideTable
from mdt4rec_core.data.schema import QUARANTINE_SCHEMA

TEXT = "text"


@dataclass(frozen=True)
class SideTableRows:
    """``table``: ``key`` column (the canonical id), every source column as a string, and ``text`` (the
    ``text_columns`` joined with " | ", the item's description for text encoders). ``quarantined``: rejected rows."""

    table: pl.DataFrame
    quarantined: pl.DataFrame


def read_side_table(path: Path, spec: SideTable, key: str) -> SideTableRows:
    lines = path.read_bytes().decode(spec.encoding, errors="replace").splitlines()
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    if spec.header == "none":
        names = list(spec.names)
    else:
        _, header_line = numbered.pop(0) if numbered else (0, "")
        names = _split(header_line, spec.separator)
        if spec.header == "recbole":
            names = [n.split(":", 1)[0] for n in names]
    missing = [c for c in [spec.id_column, *spec.text_columns] if c not in names]
    good: list[list[str]] = []
    rejected: list[dict] = []
    for row, line in numbered:
        fields = _split(line, spec.separator)
        reason = (
            f"missing column {', '.join(missing)}"
            if missing
            else f"expected {len(names)} fields, found {len(fields)}"
            if len(fields) != len(names)
            else "row is not valid text in " + spec.encoding
            if "\ufffd" in line
            else None
        )
        if reason:
            rejected.append({"file": str(path), "row": row, "field": "row", "reason": reason, "raw": line})
        else:
            good.append(fields)
    table = pl.DataFrame(good, schema={n: pl.String for n in names}, orient="row")
    table = table.with_row_index("_row").with_columns(
        pl.col(spec.id_column).str.strip_chars().alias(key),
        pl.concat_str([pl.col(c).fill_null("") for c in spec.text_columns], separator=" | ").alias(TEXT)
        if spec.text_columns
        else pl.lit("").alias(TEXT),
    )
    duplicated = table.filter(pl.col(key).is_duplicated() & ~pl.col(key).is_first_distinct())
    for record in duplicated.iter_rows(named=True):
        rejected.append(
            {
                "file": str(path),
                "row": None,
                "field": spec.id_column,
                "reason": f"duplicate id {record[key]!r}",
                "raw": " ".join(str(record[n]) for n in names),
            }
        )
    table = table.filter(pl.col(key).is_first_distinct()).drop("_row")
    columns = [key, TEXT] + [n for n in names if n not in (key, TEXT)]
    return SideTableRows(table.select(columns), pl.DataFrame(rejected, schema=QUARANTINE_SCHEMA))


def _split(line: str, separator: str) -> list[str]:
    if len(separator) == 1:
        return next(csv.reader([line], delimiter=separator))
    return line.split(separator)
