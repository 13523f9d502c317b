"""Ingestion: new raw files -> typed, de-duplicated events plus a quarantine -> the Parquet store.

``plan_ingest`` groups the files the manifest has not seen into batches of bounded size; each batch is read
(``read_batch``), validated by the caller, and written (``commit``) before the next is read, so memory stays bounded
by the batch, not the log. Row accounting holds for every file: rows_read = rows_accepted + rows_quarantined.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from mdt4rec_core.config import DatasetConfig
from mdt4rec_core.data.readers import FORMATS, parse_rows
from mdt4rec_core.data.readers.raw import ROW, RawRows
from mdt4rec_core.data.schema import (
    EVENT_KEY,
    FEEDBACK,
    INTERACTION_SCHEMA,
    ITEM_ID,
    QUARANTINE_SCHEMA,
    SOURCE_FILE,
    SOURCE_ROW,
    TIMESTAMP,
    USER_ID,
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


@dataclass(frozen=True)
class IngestPlan:
    """The new interaction files of a dataset, grouped into batches read, validated and stored one at a time.

    ``batches`` hold (position in the dataset's file order, file) pairs; ``skipped`` the files already ingested.
    """

    dataset: str
    batches: list[list[tuple[int, SourceFile]]]
    skipped: list[SourceFile]


@dataclass
class IngestBatch:
    """Everything read from one batch of new files, not yet written.

    ``accepted`` follows INTERACTION_SCHEMA (plus extra source columns); ``quarantined`` QUARANTINE_SCHEMA.
    """

    dataset: str
    files: list[FileResult]
    accepted: pl.DataFrame
    quarantined: pl.DataFrame

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)


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

    @classmethod
    def combine(cls, dataset: str, reports: list[IngestReport], files_skipped: int) -> IngestReport:
        reasons: dict[str, int] = {}
        for report in reports:
            for field_name, count in report.quarantine_reasons.items():
                reasons[field_name] = reasons.get(field_name, 0) + count
        return cls(
            dataset=dataset,
            rows_read=sum(r.rows_read for r in reports),
            rows_accepted=sum(r.rows_accepted for r in reports),
            rows_quarantined=sum(r.rows_quarantined for r in reports),
            files_ingested=sum(r.files_ingested for r in reports),
            files_skipped=files_skipped,
            file_errors={k: v for r in reports for k, v in r.file_errors.items()},
            quarantine_reasons=dict(sorted(reasons.items())),
        )


def plan_ingest(dataset: DatasetConfig, store: Store, batch_bytes: int) -> IngestPlan:
    """Group the files the manifest does not hold into batches of at most ``batch_bytes`` of raw input (a larger
    file makes a batch of its own), in file order."""
    manifest = store.manifest(dataset.name)
    batches: list[list[tuple[int, SourceFile]]] = []
    skipped: list[SourceFile] = []
    size = 0
    for position, source in enumerate(source_files(dataset)):
        if source.sha256 in manifest:
            skipped.append(source)
            continue
        file_bytes = source.path.stat().st_size
        if not batches or size + file_bytes > batch_bytes:
            batches.append([])
            size = 0
        batches[-1].append((position, source))
        size += file_bytes
    return IngestPlan(dataset.name, batches, skipped)


def read_batch(dataset: DatasetConfig, files: list[tuple[int, SourceFile]], store: Store) -> IngestBatch:
    """Read and type one batch of files; repeated events, within the batch or already stored, are quarantined."""
    spec = FORMATS[dataset.format]
    columns = {**spec.columns, **dataset.columns}
    unit = dataset.timestamp_unit if dataset.timestamp_unit != "auto" else spec.timestamp_unit
    results, accepted, quarantined = [], [], []
    for position, source in files:
        rows = spec.read(source.path)
        if spec.ordinal_time and not rows.file_error:
            rows = _with_ordinal_time(rows, position, columns.get(TIMESTAMP, TIMESTAMP))
        parsed = parse_rows(rows, columns, unit)
        results.append(FileResult(source, rows.rows_read, rows.file_error or _file_error(parsed.quarantined, rows)))
        accepted.append(parsed.accepted)
        quarantined.append(parsed.quarantined)
    batch_accepted = (
        pl.concat(accepted, how="diagonal_relaxed") if accepted else pl.DataFrame(schema=INTERACTION_SCHEMA)
    )
    batch_quarantined = pl.concat(quarantined) if quarantined else pl.DataFrame(schema=QUARANTINE_SCHEMA)
    kept, duplicates = split_duplicates(batch_accepted, store, dataset.name)
    return IngestBatch(dataset.name, results, kept, pl.concat([batch_quarantined, duplicates]))


def commit(batch: IngestBatch, store: Store, now: dt.datetime | None = None) -> IngestReport:
    """Write the batch file by file (parts first, manifest entry last) and return its accounting.

    Call it under ``store.writer_lock(batch.dataset)``.
    """
    now = now or dt.datetime.now(dt.UTC)
    ingest_date = now.date().isoformat()
    dataset = batch.dataset
    for result in batch.files:
        sha = result.source.sha256
        path = str(result.source.path)
        accepted = batch.accepted.filter(pl.col(SOURCE_FILE) == path).sort([USER_ID, TIMESTAMP, ITEM_ID])
        quarantined = batch.quarantined.filter(pl.col("file") == path).sort("row", nulls_last=True)
        if accepted.height:
            store.write_parquet(accepted, store.interaction_part(dataset, ingest_date, sha))
        if quarantined.height:
            store.write_parquet(quarantined, store.quarantine_part(dataset, ingest_date, sha))
        store.record(
            dataset,
            ManifestEntry(
                sha256=sha,
                source=path,
                kind="interactions",
                ingest_date=ingest_date,
                ingested_at=now.isoformat(),
                rows_read=result.rows_read,
                rows_accepted=accepted.height,
                rows_quarantined=quarantined.height,
                file_error=result.file_error,
            ),
        )
    reasons = batch.quarantined.group_by("field").len().sort("field") if batch.quarantined.height else None
    return IngestReport(
        dataset=dataset,
        rows_read=batch.rows_read,
        rows_accepted=batch.accepted.height,
        rows_quarantined=batch.quarantined.height,
        files_ingested=len(batch.files),
        files_skipped=0,
        file_errors={str(f.source.path): f.file_error for f in batch.files if f.file_error},
        quarantine_reasons=dict(reasons.iter_rows()) if reasons is not None else {},
    )


def ingest_side_tables(dataset: DatasetConfig, store: Store, now: dt.datetime | None = None) -> dict[str, int]:
    """Store the item and user tables when their files are new; returns rows stored per table written."""
    now = now or dt.datetime.now(dt.UTC)
    manifest = store.manifest(dataset.name)
    written = {}
    for kind, spec in (("items", dataset.items), ("users", dataset.users)):
        if spec is None:
            continue
        path = side_table_path(dataset, spec.file)
        if not path.is_file():
            continue
        source = SourceFile(path, file_sha256(path))
        if source.sha256 in manifest:
            continue
        rows = read_side_table(path, spec, ITEM_ID if kind == "items" else USER_ID)
        store.write_parquet(rows.table, f"{kind}/dataset={dataset.name}/{kind}.parquet")
        if rows.quarantined.height:
            store.write_parquet(
                rows.quarantined, store.quarantine_part(dataset.name, now.date().isoformat(), source.sha256)
            )
        store.record(
            dataset.name,
            ManifestEntry(
                sha256=source.sha256,
                source=str(path),
                kind=kind,
                ingest_date=now.date().isoformat(),
                ingested_at=now.isoformat(),
                rows_read=rows.table.height + rows.quarantined.height,
                rows_accepted=rows.table.height,
                rows_quarantined=rows.quarantined.height,
            ),
        )
        written[kind] = rows.table.height
    return written


def check_readable(report: IngestReport) -> None:
    """Raise InputError when new files came in and none of them could be read at all."""
    if report.files_ingested and len(report.file_errors) == report.files_ingested:
        path, error = next(iter(report.file_errors.items()))
        more = f" (and {len(report.file_errors) - 1} more files)" if len(report.file_errors) > 1 else ""
        raise InputError(f"{path}: {error}{more}")


def _with_ordinal_time(rows: RawRows, position: int, column: str) -> RawRows:
    frame = rows.frame.with_columns((pl.col(ROW) + position * ORDINAL_SECONDS_PER_FILE).alias(column))
    return RawRows(rows.file, frame, rows.file_error)


def _file_error(quarantined: pl.DataFrame, rows: RawRows) -> str | None:
    """The file-level problem found while typing (a missing column), if any."""
    if rows.rows_read == 0 or quarantined.height == 0:
        return None
    first = quarantined.row(0, named=True)
    return first["reason"] if first["field"] == "file" else None


def split_duplicates(accepted: pl.DataFrame, store: Store, dataset: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep the first occurrence of each (user_id, item_id, timestamp); quarantine repeats and already-stored events.

    Stored events are matched through a 64-bit hash of the key (8 bytes per stored event in memory), and every hash
    match is confirmed on the exact key, so a hash collision never rejects a new event.
    """
    if accepted.height == 0:
        return accepted, pl.DataFrame(schema=QUARANTINE_SCHEMA)
    indexed = accepted.with_row_index("_position").with_columns(_key_hash().alias("_hash"))
    keys = indexed.select("_position", "_hash", *EVENT_KEY, FEEDBACK, SOURCE_FILE, SOURCE_ROW).sort(
        ["_hash", *EVENT_KEY, "_position"]
    )
    same_as_previous = pl.all_horizontal([pl.col(c) == pl.col(c).shift(1) for c in ("_hash", *EVENT_KEY)]).fill_null(
        False
    )
    keys = keys.with_columns(
        same_as_previous.alias("_repeat"),
        pl.when(~same_as_previous).then(pl.col(SOURCE_ROW)).forward_fill().alias("_first_row"),
        pl.when(~same_as_previous).then(pl.col(SOURCE_FILE)).forward_fill().alias("_first_file"),
    )
    repeated = keys.filter("_repeat")
    reasons = [
        _duplicate_rows(
            repeated,
            pl.format(
                "duplicate event (user_id, item_id, timestamp) of row {} in {}",
                pl.col("_first_row"),
                pl.col("_first_file"),
            ),
        )
    ]
    keep = indexed.join(repeated.select("_position"), on="_position", how="anti")
    stored_hashes = store.stored_key_hashes(dataset, _key_hash())
    if stored_hashes is not None:
        candidates = keep.filter(pl.col("_hash").is_in(stored_hashes.implode()))
        if candidates.height:
            stored_keys = (
                store.scan_interactions(dataset)
                .filter(_key_hash().is_in(candidates["_hash"].implode()))
                .select(EVENT_KEY)
                .collect()
            )
            already = candidates.join(stored_keys, on=list(EVENT_KEY), how="semi")
            reasons.append(
                _duplicate_rows(already, pl.lit("duplicate event (user_id, item_id, timestamp) already stored"))
            )
            keep = keep.join(already.select("_position"), on="_position", how="anti")
    return keep.sort("_position").drop("_position", "_hash"), pl.concat(reasons)


def _key_hash() -> pl.Expr:
    return pl.struct(*EVENT_KEY).hash(seed=0)


def _duplicate_rows(rows: pl.DataFrame, reason: pl.Expr) -> pl.DataFrame:
    return rows.select(
        pl.col(SOURCE_FILE).alias("file"),
        pl.col(SOURCE_ROW).alias("row"),
        pl.lit("user_id,item_id,timestamp").alias("field"),
        reason.alias("reason"),
        pl.format("{},{},{},{}", "user_id", "item_id", TIMESTAMP, "feedback").alias("raw"),
    ).cast(QUARANTINE_SCHEMA)
