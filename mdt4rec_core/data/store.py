"""The Parquet store: interactions, quarantine, side tables, the manifest of ingested files, and trajectories.

Layout under the store root (a local path or any URI pyarrow understands, such as ``s3://bucket/prefix``)::

    interactions/dataset=<name>/ingest_date=<YYYY-MM-DD>/part-<sha16>.parquet   accepted events
    quarantine/dataset=<name>/ingest_date=<YYYY-MM-DD>/part-<sha16>.parquet     rejected rows with reasons
    manifest/dataset=<name>/<sha256>.json                                        one entry per ingested file
    items/dataset=<name>/items.parquet, users/dataset=<name>/users.parquet      side tables
    trajectories/dataset=<name>/version=<hash>/                                  versioned trajectory sets

Every file is written under a temporary name and renamed into place. A source file's parts are named after its
content hash and its manifest entry is written last, so a run killed half-way leaves parts without an entry; the next
run deletes them (under the dataset's writer lock) before ingesting that file again. Nothing is stored twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class ManifestEntry:
    """What happened to one ingested source file."""

    sha256: str
    source: str
    kind: str  # "interactions", "items" or "users"
    ingest_date: str
    ingested_at: str
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    file_error: str | None = None


class Store:
    """A Parquet store rooted at ``uri``."""

    def __init__(self, uri: str | os.PathLike[str]):
        uri = str(uri)
        self.is_local = "://" not in uri
        self.uri = str(Path(uri).expanduser().resolve()) if self.is_local else uri.rstrip("/")
        self.fs, self.root = (
            pafs.FileSystem.from_uri(self.uri) if not self.is_local else (pafs.LocalFileSystem(), self.uri)
        )

    # -- paths -----------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, *parts: str) -> str:
        """A path polars and pyarrow readers accept (local path or URI)."""
        return self.path(*parts) if self.is_local else "/".join([self.uri, *parts])

    def interaction_part(self, dataset: str, ingest_date: str, sha256: str) -> str:
        return f"interactions/dataset={dataset}/ingest_date={ingest_date}/part-{sha256[:16]}.parquet"

    def quarantine_part(self, dataset: str, ingest_date: str, sha256: str) -> str:
        return f"quarantine/dataset={dataset}/ingest_date={ingest_date}/part-{sha256[:16]}.parquet"

    # -- atomic writes -----------------------------------------------------------------------------------------------
    def write_parquet(self, frame: pl.DataFrame, relative: str) -> None:
        """Write ``frame`` to ``relative`` atomically: a temporary file in the same folder, then a rename."""
        final = self.path(relative)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        temporary = f"{final}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        pq.write_table(frame.to_arrow(), temporary, filesystem=self.fs, compression="zstd")
        self.fs.move(temporary, final)

    def write_json(self, payload: dict, relative: str) -> None:
        self.write_bytes(json.dumps(payload, indent=2, sort_keys=True, default=str).encode(), relative)

    def write_bytes(self, content: bytes, relative: str) -> None:
        """Write ``content`` to ``relative`` atomically (temporary file in the same folder, then a rename)."""
        final = self.path(relative)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        temporary = f"{final}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        with self.fs.open_output_stream(temporary) as out:
            out.write(content)
        self.fs.move(temporary, final)

    def read_json(self, relative: str) -> dict | None:
        if not self.exists(relative):
            return None
        with self.fs.open_input_stream(self.path(relative)) as handle:
            return json.loads(handle.read())

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def files(self, relative: str, suffix: str = "") -> list[str]:
        """Paths (relative to the root) of the files below ``relative`` whose name ends with ``suffix``, sorted."""
        selector = pafs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        prefix = len(self.root) + 1
        return sorted(
            info.path[prefix:]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
        )

    def delete(self, relative: str) -> None:
        self.fs.delete_file(self.path(relative))

    @contextlib.contextmanager
    def writer_lock(self, dataset: str) -> Iterator[None]:
        """Hold the dataset's writer lock (one writer at a time on a local store), after clearing what killed
        writers left behind: temporary files, and parts of source files that never made it into the manifest."""
        handle = None
        if self.is_local:
            lock_dir = Path(self.root) / ".locks"
            lock_dir.mkdir(parents=True, exist_ok=True)
            handle = (lock_dir / f"{dataset}.lock").open("w")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            self._clear_leftovers(dataset)
            yield
        finally:
            if handle is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()

    def _clear_leftovers(self, dataset: str) -> None:
        for area in ("interactions", "quarantine", "manifest", "items", "users", "trajectories"):
            for leftover in self.files(f"{area}/dataset={dataset}", TMP_SUFFIX):
                self.delete(leftover)
        recorded = {sha[:16] for sha in self.manifest(dataset)}
        for area in ("interactions", "quarantine"):
            for part in self.files(f"{area}/dataset={dataset}", ".parquet"):
                if part.rsplit("-", 1)[-1].removesuffix(".parquet") not in recorded:
                    self.delete(part)

    # -- manifest ----------------------------------------------------------------------------------------------------
    def manifest(self, dataset: str) -> dict[str, ManifestEntry]:
        entries = {}
        for relative in self.files(f"manifest/dataset={dataset}", ".json"):
            payload = self.read_json(relative)
            assert payload is not None
            entries[payload["sha256"]] = ManifestEntry(**payload)
        return entries

    def record(self, dataset: str, entry: ManifestEntry) -> None:
        self.write_json(asdict(entry), f"manifest/dataset={dataset}/{entry.sha256}.json")

    # -- reading -----------------------------------------------------------------------------------------------------
    def interaction_parts(self, dataset: str) -> list[str]:
        return self.files(f"interactions/dataset={dataset}", ".parquet")

    def scan_interactions(self, dataset: str) -> pl.LazyFrame | None:
        """All stored events of ``dataset`` (None when nothing is stored), without the hive partition columns."""
        parts = self.interaction_parts(dataset)
        if not parts:
            return None
        return pl.scan_parquet(
            [self.url(p) for p in parts], hive_partitioning=False, missing_columns="insert", extra_columns="ignore"
        )

    def stored_key_hashes(self, dataset: str, key_hash: pl.Expr) -> pl.Series | None:
        """``key_hash`` evaluated on every stored event of ``dataset`` (None when nothing is stored)."""
        scan = self.scan_interactions(dataset)
        return None if scan is None else scan.select(key_hash.alias("hash")).collect()["hash"]

    def scan_quarantine(self, dataset: str) -> pl.LazyFrame | None:
        parts = self.files(f"quarantine/dataset={dataset}", ".parquet")
        return pl.scan_parquet([self.url(p) for p in parts], hive_partitioning=False) if parts else None
