"""Ingestion: new raw files -> typed, de-duplicated events plus a quarantine -> the Parquet store.

Split in two so that validation can sit in between: ``read_new_files`` reads what the manifest has not seen and
``commit`` writes it. Row accounting holds for every file: rows_read = rows_accepted + rows_quarantined.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import polars as pl

from mdt4rec_core.config import DatasetConfig
from mdt4rec_core.data.readers import FORMATS, parse_rows
from mdt4rec_core.data.readers.raw import ROW, RawRows
from mdt4rec_core.data.schema import (
    EVENT_KEY, INTERACTION_SCHEMA, QUARANTINE_SCHEMA, SOURCE_FILE, SOURCE_ROW, TIMESTAMP,
)
from mdt4rec_core.data.side_tables import read_side_table
from mdt4rec_core.data.sources import SourceFile, file_sha256, side_table_path, source_files
from mdt4rec_core.data.store import ManifestEntry, Store
from mdt4rec_core.errors import InputError

ORDINAL_SECONDS_PER_FILE = 1_000_000_000
"""Formats without time stamp events by position: file k's row r happens at k * 1e9 + r seconds after the epoch."""


@dataclass(frozen=True)
class FileResult:
    source: SourceFile
    rows_read: int
    file_error: str | None


@dataclass
class IngestBatch:
    """Everything read from the files the manifest has not seen, not yet written.

    ``accepted`` follows INTERACTION_SCHEMA (plus extra source columns); ``quarantined`` QUARANTINE_SCHEMA.
    """

    dataset: str
    files: list[FileResult]
    skipped: list[SourceFile]
    accepted: pl.DataFrame
    quarantined: pl.DataFrame
    side_tables: dict[str, tuple[SourceFile, pl.DataFrame, pl.DataFrame]] = field(default_factory=dict)

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    def file_summary(self, result: FileResult) -> tuple[int, int]:
        """(accepted, quarantined) row counts of one file."""
        path = str(result.source.path)
        return (
            self.accepted.filter(pl.col(SOURCE_FILE) == path).height,
            self.quarantined.filter(pl.col("file") == path).height,
        )


@dataclass(frozen=True)
class IngestReport:
    dataset: str
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    files_ingested: int
    files_skipped: int
    file_errors: dict[str, str]
    quarantine_reasons: dict[str, int]


def read_new_files(dataset: DatasetConfig, store: Store) -> IngestBatch:
    """Read and type every interaction file of ``dataset`` that the store's manifest does not hold yet."""
    spec = FORMATS[dataset.format]
    columns = {**spec.columns, **dataset.columns}
    unit = dataset.timestamp_unit if dataset.timestamp_unit != "auto" else spec.timestamp_unit
    manifest = store.manifest(dataset.name)
    files, skipped, accepted, quarantined = [], [], [], []
    for position, source in enumerate(source_files(dataset)):
        if source.sha256 in manifest:
            skipped.append(source)
            continue
        rows = spec.read(source.path)
        if spec.ordinal_time and not rows.file_error:
            rows = _with_ordinal_time(rows, position, columns.get(TIMESTAMP, TIMESTAMP))
        parsed = parse_rows(rows, columns, unit)
        files.append(FileResult(source, rows.rows_read, rows.file_error or _file_error(parsed.quarantined, rows)))
        accepted.append(parsed.accepted)
        quarantined.append(parsed.quarantined)
    batch_accepted = pl.concat(accepted, how="diagonal_relaxed") if accepted else pl.DataFrame(schema=INTERACTION_SCHEMA)
    batch_quarantined = pl.concat(quarantined) if quarantined else pl.DataFrame(schema=QUARANTINE_SCHEMA)
    batch_accepted, duplicates = _split_duplicates(batch_accepted, store.stored_event_keys(dataset.name))
    batch = IngestBatch(dataset.name, files, skipped, batch_accepted, pl.concat([batch_quarantined, duplicates]))
    batch.side_tables = _read_new_side_tables(dataset, manifest)
    return batch


def commit(batch: IngestBatch, store: Store, now: dt.datetime | None = None) -> IngestReport:
    """Write the batch file by file (parts first, manifest entry last) and return its accounting."""
    now = now or dt.datetime.now(dt.UTC)
    ingest_date = now.date().isoformat()
    dataset = batch.dataset
    for result in batch.files:
        sha = result.source.sha256
        path = str(result.source.path)
        accepted = batch.accepted.filter(pl.col(SOURCE_FILE) == path).sort(["user_id", TIMESTAMP, "item_id"])
        quarantined = batch.quarantined.filter(pl.col("file") == path).sort("row", nulls_last=True)
        if accepted.height:
            store.write_parquet(accepted, store.interaction_part(dataset, ingest_date, sha))
        if quarantined.height:
            store.write_parquet(quarantined, store.quarantine_part(dataset, ingest_date, sha))
        store.record(dataset, ManifestEntry(
            sha256=sha, source=path, kind="interactions", ingest_date=ingest_date, ingested_at=now.isoformat(),
            rows_read=result.rows_read, rows_accepted=accepted.height, rows_quarantined=quarantined.height,
            file_error=result.file_error,
        ))
    for kind, (source, table, rejected) in batch.side_tables.items():
        store.write_parquet(table, f"{kind}/dataset={dataset}/{kind}.parquet")
        if rejected.height:
            store.write_parquet(rejected, f"quarantine/dataset={dataset}/ingest_date={ingest_date}/{kind}-{source.sha256[:16]}.parquet")
        store.record(dataset, ManifestEntry(
            sha256=source.sha256, source=str(source.path), kind=kind, ingest_date=ingest_date,
            ingested_at=now.isoformat(), rows_read=table.height + rejected.height, rows_accepted=table.height,
            rows_quarantined=rejected.height,
        ))
    reasons = batch.quarantined.group_by("field").len().sort("field") if batch.quarantined.height else None
    return IngestReport(
        dataset=dataset,
        rows_read=batch.rows_read,
        rows_accepted=batch.accepted.height,
        rows_quarantined=batch.quarantined.height,
        files_ingested=len(batch.files),
        files_skipped=len(batch.skipped),
        file_errors={str(f.source.path): f.file_error for f in batch.files if f.file_error},
        quarantine_reasons=dict(reasons.iter_rows()) if reasons is not None else {},
    )


def check_readable(batch: IngestBatch) -> None:
    """Raise InputError when new files came in and none of them could be read at all."""
    errors = [f for f in batch.files if f.file_error]
    if errors and len(errors) == len(batch.files):
        first = errors[0]
        more = f" (and {len(errors) - 1} more files)" if len(errors) > 1 else ""
        raise InputError(f"{first.source.path}: {first.file_error}{more}")


def _with_ordinal_time(rows: RawRows, position: int, column: str) -> RawRows:
    frame = rows.frame.with_columns((pl.col(ROW) + position * ORDINAL_SECONDS_PER_FILE).alias(column))
    return RawRows(rows.file, frame, rows.file_error)


def _file_error(quarantined: pl.DataFrame, rows: RawRows) -> str | None:
    """The file-level problem found while typing (a missing column), if any."""
    if rows.rows_read == 0 or quarantined.height == 0:
        return None
    first = quarantined.row(0, named=True)
    return first["reason"] if first["field"] == "file" else None


def _split_duplicates(accepted: pl.DataFrame, stored_keys: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the first occurrence of each (user_id, item_id, timestamp); quarantine repeats and already-stored events."""
    if accepted.height == 0:
        return accepted, pl.DataFrame(schema=QUARANTINE_SCHEMA)
    indexed = accepted.with_row_index("_position")
    first = indexed.group_by(EVENT_KEY).agg(
        pl.col("_position").min().alias("_first"),
        pl.col(SOURCE_FILE).first().alias("_first_file"),
        pl.col(SOURCE_ROW).first().alias("_first_row"),
        pl.len().alias("_n"),
    )
    repeated = indexed.join(first.filter(pl.col("_n") > 1), on=EVENT_KEY, how="inner").filter(
        pl.col("_position") != pl.col("_first")
    )
    reasons = [
        _duplicate_rows(repeated, pl.format("duplicate event (user_id, item_id, timestamp) of row {} in {}",
                                            pl.col("_first_row"), pl.col("_first_file")))
    ]
    keep = indexed.join(repeated.select("_position"), on="_position", how="anti")
    if stored_keys is not None and stored_keys.height:
        already = keep.join(stored_keys, on=EVENT_KEY, how="semi")
        reasons.append(_duplicate_rows(already, pl.lit("duplicate event (user_id, item_id, timestamp) already stored")))
        keep = keep.join(stored_keys, on=EVENT_KEY, how="anti")
    return keep.sort("_position").drop("_position"), pl.concat(reasons)


def _duplicate_rows(rows: pl.DataFrame, reason: pl.Expr) -> pl.DataFrame:
    return rows.select(
        pl.col(SOURCE_FILE).alias("file"),
        pl.col(SOURCE_ROW).alias("row"),
        pl.lit("user_id,item_id,timestamp").alias("field"),
        reason.alias("reason"),
        pl.format("{},{},{},{}", "user_id", "item_id", TIMESTAMP, "feedback").alias("raw"),
    ).cast(QUARANTINE_SCHEMA)


def _read_new_side_tables(dataset: DatasetConfig, manifest: dict[str, ManifestEntry]):
    tables = {}
    for kind, spec in (("items", dataset.items), ("users", dataset.users)):
        if spec is None:
            continue
        path = side_table_path(dataset, spec.file)
        if not path.is_file():
            continue
        source = SourceFile(path, file_sha256(path))
        if source.sha256 in manifest:
            continue
        rows = read_side_table(path, spec, "item_id" if kind == "items" else "user_id")
        tables[kind] = (source, rows.table, rows.quarantined)
    return tables
