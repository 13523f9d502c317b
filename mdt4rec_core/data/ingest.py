"""Ingestion: new raw files -> typed, de-duplicated events plus a quarantine -> the Parquet store.

``plan_ingest`` groups the files the manifest has not seen into batches of bounded size; each batch is read
(``read_batch``), validated by the caller, and written (``commit``) before the next is read, so memory stays bounded
by the batch, not the log. Row accounting holds for every file: rows_read = rows_accepted + rows_quarantined.

Row-level problems (a bad value, a malformed line, an event already seen) quarantine the row with the field at fault
and the reason; file-level problems (an undecodable file, an unusable header, nested columns) quarantine every row
of that file and are reported as its ``file_error``, while the other files of the batch go on. A timestamp unit that
does not fit a file stops the run with an InputError suggesting the unit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import polars as pl

from mdt4rec_core.config import DatasetConfig, IngestConfig
from mdt4rec_core.data.readers import FORMATS, parse_rows
from mdt4rec_core.data.readers.canonical import ParseRules
from mdt4rec_core.data.readers.raw import INTERNAL_PREFIX, ROW, RawRows
from mdt4rec_core.data.schema import (
    EVENT_KEY,
    FEEDBACK,
    FUTURE_TOLERANCE,
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

_POSITION, _HASH, _REPEAT = f"{INTERNAL_PREFIX}position", f"{INTERNAL_PREFIX}hash", f"{INTERNAL_PREFIX}repeat"
_FIRST_ROW, _FIRST_FILE = f"{INTERNAL_PREFIX}first_row", f"{INTERNAL_PREFIX}first_file"
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


def with_run_settings(dataset: DatasetConfig, ingest: IngestConfig) -> DatasetConfig:
    """``dataset`` with the run's ``timestamp_unit`` and ``feedback_max`` where ``ingest`` sets them (the way to set
    them for an ad-hoc dataset, which has no YAML file)."""
    settings = {"timestamp_unit": ingest.timestamp_unit, "feedback_max": ingest.feedback_max}
    changes = {name: value for name, value in settings.items() if value is not None}
    return dataset.model_copy(update=changes) if changes else dataset


def plan_ingest(dataset: DatasetConfig, store: Store, batch_bytes: int) -> IngestPlan:
    """Group the files the manifest does not hold into batches of at most ``batch_bytes`` of raw input (a larger
    file makes a batch of its own), in file order.

    Files are known by content: a file whose content was ingested before is skipped, whatever its name, and a new
    file with the content of another new file is planned as its copy (its own manifest entry; its events are
    repeats of the first file's). A file whose content changed under the same name is a new file: its events
    already stored (same user, item and timestamp, whatever the feedback) are quarantined as already stored, its
    other rows are accepted, and events that left the file stay stored.
    """
    manifest = store.manifest(dataset.name)
    batches: list[list[tuple[int, SourceFile]]] = []
    skipped: list[SourceFile] = []
    planned: set[str] = set()
    size = 0
    for position, source in enumerate(source_files(dataset)):
        if source.sha256 in planned:
            source = replace(source, copy=True)
        if source.sha256 in manifest or source.key in manifest:
            skipped.append(source)
            continue
        planned.add(source.sha256)
        file_bytes = source.path.stat().st_size
        if not batches or size + file_bytes > batch_bytes:
            batches.append([])
            size = 0
        batches[-1].append((position, source))
        size += file_bytes
    return IngestPlan(dataset.name, batches, skipped)


def read_batch(
    dataset: DatasetConfig, files: list[tuple[int, SourceFile]], store: Store, now: dt.datetime | None = None
) -> IngestBatch:
    """Read and type one batch of files; repeated events, within the batch or already stored, are quarantined, and
    so are events more than FUTURE_TOLERANCE after ``now`` (default: the clock)."""
    spec = FORMATS[dataset.format]
    columns = {**spec.columns, **dataset.columns}
    rules = parse_rules(dataset, now or dt.datetime.now(dt.UTC))
    results, accepted, quarantined = [], [], []
    for position, source in files:
        rows = spec.read(source.path)
        if spec.ordinal_time and not rows.file_error:
            rows = _with_ordinal_time(rows, position, columns.get(TIMESTAMP, TIMESTAMP))
        parsed = parse_rows(rows, columns, rules)
        results.append(FileResult(source, rows.rows_read, rows.file_error or _file_error(parsed.quarantined, rows)))
        accepted.append(parsed.accepted)
        quarantined.append(parsed.quarantined)
    batch_accepted = (
        pl.concat(accepted, how="diagonal_relaxed") if accepted else pl.DataFrame(schema=INTERACTION_SCHEMA)
    )
    batch_quarantined = pl.concat(quarantined) if quarantined else pl.DataFrame(schema=QUARANTINE_SCHEMA)
    kept, duplicates = split_duplicates(batch_accepted, store, dataset.name)
    return IngestBatch(dataset.name, results, kept, pl.concat([batch_quarantined, duplicates]))


def parse_rules(dataset: DatasetConfig, now: dt.datetime) -> ParseRules:
    """The dataset's value rules at time ``now``; formats that time events by position have no latest time."""
    spec = FORMATS[dataset.format]
    latest = None if spec.ordinal_time else now + FUTURE_TOLERANCE
    return ParseRules(dataset.timestamp_unit or spec.timestamp_unit, latest, dataset.feedback_max)


def commit(batch: IngestBatch, store: Store, now: dt.datetime | None = None) -> IngestReport:
    """Write the batch file by file (parts first, manifest entry last, both under the file's key) and return its
    accounting.

    Call it under ``store.writer_lock(batch.dataset)``.
    """
    now = now or dt.datetime.now(dt.UTC)
    ingest_date = now.date().isoformat()
    dataset = batch.dataset
    for result in batch.files:
        sha = result.source.key
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
    indexed = accepted.with_row_index(_POSITION).with_columns(_key_hash().alias(_HASH))
    keys = indexed.select(_POSITION, _HASH, *EVENT_KEY, FEEDBACK, SOURCE_FILE, SOURCE_ROW).sort(
        [_HASH, *EVENT_KEY, _POSITION]
    )
    same_as_previous = pl.all_horizontal([pl.col(c) == pl.col(c).shift(1) for c in (_HASH, *EVENT_KEY)]).fill_null(
        False
    )
    keys = keys.with_columns(
        same_as_previous.alias(_REPEAT),
        pl.when(~same_as_previous).then(pl.col(SOURCE_ROW)).forward_fill().alias(_FIRST_ROW),
        pl.when(~same_as_previous).then(pl.col(SOURCE_FILE)).forward_fill().alias(_FIRST_FILE),
    )
    repeated = keys.filter(_REPEAT)
    reasons = [
        _duplicate_rows(
            repeated,
            pl.format(
                "duplicate event (user_id, item_id, timestamp) of row {} in {}",
                pl.col(_FIRST_ROW),
                pl.col(_FIRST_FILE),
            ),
        )
    ]
    keep = indexed.join(repeated.select(_POSITION), on=_POSITION, how="anti")
    stored_hashes = store.stored_key_hashes(dataset, _key_hash())
    if stored_hashes is not None:
        candidates = keep.filter(pl.col(_HASH).is_in(stored_hashes.implode()))
        if candidates.height:
            stored_keys = (
                store.scan_interactions(dataset)
                .filter(_key_hash().is_in(candidates[_HASH].implode()))
                .select(EVENT_KEY)
                .collect()
            )
            already = candidates.join(stored_keys, on=list(EVENT_KEY), how="semi")
            reasons.append(
                _duplicate_rows(already, pl.lit("duplicate event (user_id, item_id, timestamp) already stored"))
            )
            keep = keep.join(already.select(_POSITION), on=_POSITION, how="anti")
    return keep.sort(_POSITION).drop(_POSITION, _HASH), pl.concat(reasons)


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
