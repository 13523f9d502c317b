"""The Parquet store: interactions, quarantine, side tables, the manifest of ingested files, and trajectories.

Layout under the store root (a local path or any URI pyarrow understands, such as ``s3://bucket/prefix``)::

    interactions/dataset=<name>/ingest_date=<YYYY-MM-DD>/part-<sha16>.parquet   accepted events
    quarantine/dataset=<name>/ingest_date=<YYYY-MM-DD>/part-<sha16>.parquet     rejected rows with reasons
    manifest/dataset=<name>/<sha256>.json                                        one entry per ingested file
    items/dataset=<name>/items.parquet, users/dataset=<name>/users.parquet      side tables
    trajectories/dataset=<name>/version=<hash>/                                  versioned trajectory sets
    environments/dataset=<name>/protocol=<p>/version=<hash>/                     built simulators
    recommendations/dataset=<name>/model=<label>/part-*.parquet                   top-k per user (mdt4rec score)
    damaged/<YYYYMMDDTHHMMSS>-<id>/<path>                                        what a repair moved aside
    .locks/<name>.lock                                                           the writer lock, naming its holder

Every file is written under a temporary name and renamed into place. A source file's parts are named after its
content hash and its manifest entry is written last, so a run killed half-way leaves parts without an entry; the next
run deletes them (under the dataset's writer lock) before ingesting that file again. Nothing is stored twice.

Every path is checked to stay inside the store root. Only files named ``<sha256>.json`` directly in a manifest folder
are manifest entries; anything else there is ignored (``mdt4rec validate`` lists it). A write that fails (disk full,
no permission) and a stored file that cannot be read (damaged, missing) are a StoreError naming the file and what to
do: ``repair`` moves damaged files aside, with what depends on them, so that the next run reads their sources again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import io
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mdt4rec_core.config import LOCK_TIMEOUT_SECONDS, check_dataset_name
from mdt4rec_core.errors import InputError, StoreError, describe_os_error

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
DAMAGED = "damaged"
AREAS = (
    "interactions",
    "quarantine",
    "manifest",
    "items",
    "users",
    "trajectories",
    "environments",
    "recommendations",
)
MANIFEST_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.json")
READ_ERRORS = (OSError, ValueError, EOFError, TypeError, KeyError, pl.exceptions.PolarsError, pa.ArrowException)
"""What reading and decoding a damaged file raises (pyarrow reports a damaged footer as an OSError without errno)."""
LOCK_POLL_SECONDS = 0.2
"""How often a writer tries again to take a writer lock held by another process."""
LOCK_REPORT_SECONDS = 30.0
"""How often a writer waiting for a writer lock says so again."""


_NPY_HEADER_LOCK = threading.Lock()  # SystemError 'AST constructor recursion depth mismatch' otherwise


class LockTimeout(InputError):
    """A dataset's writer lock stayed held by another process for longer than the writer was willing to wait."""


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


@dataclass(frozen=True)
class LockHolder:
    """The process holding a writer lock, as it recorded itself in the lock file."""

    pid: int
    host: str
    since: str  # when it took the lock: YYYY-MM-DD HH:MM:SS UTC

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{where} since {self.since}"


@dataclass(frozen=True)
class Damage:
    """A stored file (relative to the root) that cannot be read in full, and why."""

    relative: str
    problem: str


class Store:
    """A Parquet store rooted at ``uri``."""

    def __init__(self, uri: str | os.PathLike[str]):
        uri = str(uri)
        self.is_local = "://" not in uri
        self.uri = str(Path(uri).expanduser().resolve()) if self.is_local else uri.rstrip("/")
        if self.is_local and Path(self.uri).exists() and not Path(self.uri).is_dir():
            raise StoreError(f"{self.uri}: is a file, not a store folder (a missing folder is created)")
        self.fs, self.root = (
            pafs.FileSystem.from_uri(self.uri) if not self.is_local else (pafs.LocalFileSystem(), self.uri)
        )

    # -- paths -----------------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` below the root; a StoreError when it would lead outside the store."""
        joined = posixpath.normpath("/".join([self.root, *parts]))
        if joined != self.root and not joined.startswith(self.root.rstrip("/") + "/"):
            raise StoreError(f"{'/'.join(parts)}: leads outside the store {self.uri}")
        return joined

    def url(self, *parts: str) -> str:
        """A path polars and pyarrow readers accept (local path or URI)."""
        path = self.path(*parts)
        return path if self.is_local else self.uri + path[len(self.root) :]

    def interaction_part(self, dataset: str, ingest_date: str, sha256: str) -> str:
        return f"interactions/dataset={dataset}/ingest_date={ingest_date}/part-{sha256[:16]}.parquet"

    def quarantine_part(self, dataset: str, ingest_date: str, sha256: str) -> str:
        return f"quarantine/dataset={dataset}/ingest_date={ingest_date}/part-{sha256[:16]}.parquet"

    # -- atomic writes -----------------------------------------------------------------------------------------------
    def write_parquet(self, frame: pl.DataFrame, relative: str) -> None:
        """Write ``frame`` to ``relative`` atomically: a temporary file in the same folder, then a rename."""
        self._write(
            relative,
            lambda temporary: pq.write_table(frame.to_arrow(), temporary, filesystem=self.fs, compression="zstd"),
        )

    def write_json(self, payload: dict, relative: str) -> None:
        self.write_bytes(json.dumps(payload, indent=2, sort_keys=True, default=str).encode(), relative)

    def write_bytes(self, content: bytes, relative: str) -> None:
        """Write ``content`` to ``relative`` atomically (temporary file in the same folder, then a rename)."""

        def write(temporary: str) -> None:
            with self.fs.open_output_stream(temporary) as out:
                out.write(content)

        self._write(relative, write)

    def _write(self, relative: str, write: Callable[[str], None]) -> None:
        """``write`` a temporary file next to ``relative``, then rename it into place."""
        final = self.path(relative)
        temporary = f"{final}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        with self._changing(relative, temporary):
            self.fs.create_dir(posixpath.dirname(final), recursive=True)
            write(temporary)
            self.fs.move(temporary, final)

    @contextlib.contextmanager
    def _changing(self, relative: str, temporary: str | None = None) -> Iterator[None]:
        """Turn an OSError while changing ``relative`` (disk full, no permission) into a StoreError naming it,
        after removing ``temporary`` (the half-written file) when given."""
        try:
            yield
        except OSError as exc:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(temporary)
            raise StoreError(
                f"{self.url(relative)}: cannot write ({describe_os_error(exc)}); nothing was half-written: "
                "run again once that is fixed"
            ) from None

    def delete(self, relative: str) -> None:
        with self._changing(relative):
            self.fs.delete_file(self.path(relative))

    def _move(self, relative: str, destination: str) -> None:
        """Rename the file or folder ``relative`` to ``destination`` (both relative to the root)."""
        with self._changing(relative):
            self.fs.create_dir(posixpath.dirname(self.path(destination)), recursive=True)
            self.fs.move(self.path(relative), self.path(destination))

    # -- reads -------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reading(self, relative: str) -> Iterator[None]:
        """Turn a failure to read or decode the stored file ``relative`` into a StoreError naming it and what to do."""
        try:
            yield
        except InputError:
            raise
        except READ_ERRORS as exc:
            raise StoreError(f"{self.url(relative)}: {read_problem(exc)}: {self._remedy(relative, exc)}") from None

    def _remedy(self, relative: str, exc: BaseException) -> str:
        if not is_damage(exc):
            return "check the file's permissions and the disk, then run again"
        found = re.search(r"dataset=([^/]+)", relative)
        dataset = found.group(1) if found else "<name>"
        return (
            f"`mdt4rec validate --repair --dataset {dataset} --store {self.uri}` moves it aside, then "
            f"`mdt4rec ingest --dataset {dataset}` rebuilds it from the sources"
        )

    def read_json(self, relative: str) -> dict | None:
        """The JSON object stored at ``relative``, or None when there is no such file."""
        if not self.exists(relative):
            return None
        with self.reading(relative):
            return self._json_object(relative)

    def read_parquet(self, relative: str, columns: list[str] | None = None) -> pl.DataFrame:
        with self.reading(relative):
            return pl.read_parquet(self.url(relative), columns=columns)

    def read_array(self, relative: str) -> np.ndarray:
        """A stored ``.npy`` array (never unpickled)."""
        with self.reading(relative):
            return self._array(relative)

    # Decoders: read a stored file in full and raise what the reader raises (see ``reading`` and ``damaged_files``).
    def _bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as handle:
            return handle.read()

    def _json_object(self, relative: str) -> dict:
        payload = json.loads(self._bytes(relative))
        if not isinstance(payload, dict):
            raise ValueError(f"a JSON {type(payload).__name__}, not an object")
        return payload

    def _array(self, relative: str) -> np.ndarray:
        data = io.BytesIO(self._bytes(relative))
        with _NPY_HEADER_LOCK:  # np.load parses its header with ast: not safe in two threads at once on Python 3.11
            return np.load(data, allow_pickle=False)

    def _table(self, relative: str) -> pl.DataFrame:
        return pl.read_parquet(self.url(relative))

    def _entry(self, relative: str) -> ManifestEntry:
        entry = ManifestEntry(**self._json_object(relative))
        if f"{entry.sha256}.json" != posixpath.basename(relative):
            raise ValueError(f"the entry is for {entry.sha256[:16]}..., not for the file it is named after")
        return entry

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def files(self, relative: str, suffix: str = "") -> list[str]:
        """Paths (relative to the root) of the files below ``relative`` whose name ends with ``suffix``, sorted."""
        selector = pafs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        prefix = len(self.root.rstrip("/")) + 1
        with self.reading(relative):
            infos = self.fs.get_file_info(selector)
        return sorted(
            info.path[prefix:] for info in infos if info.type == pafs.FileType.File and info.path.endswith(suffix)
        )

    # -- writer lock -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer_lock(self, dataset: str, timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
        """Hold the dataset's writer lock (one writer at a time on a local store), after clearing what killed
        writers left behind: temporary files, and parts of source files that never made it into the manifest.
        While another process holds the lock, wait for it as ``_exclusive`` says."""
        with self._exclusive(dataset, timeout_seconds):
            self._clear_leftovers(dataset)
            yield

    @contextlib.contextmanager
    def _exclusive(self, dataset: str, timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
        """Hold the lock file ``.locks/<dataset>.lock`` of a local store (a remote store is not locked).

        While another process holds it, log a warning at once and every LOCK_REPORT_SECONDS ("waiting for the lock
        on <dataset> held by pid N since T"), and raise LockTimeout after ``timeout_seconds``. The holder records
        its pid, host and start time in the file while it holds the lock and empties it on release. A holder that
        dies loses the lock with its process (the kernel releases it), so the next writer takes it over at once;
        the record a killed holder leaves behind is overwritten by the next holder, and is never reported as the
        holder meanwhile (a recorded process of this host that no longer runs counts as no record).
        """
        check_dataset_name(dataset)
        if not self.is_local:
            yield
            return
        relative = f".locks/{dataset}.lock"
        with self._changing(relative):
            Path(self.path(".locks")).mkdir(parents=True, exist_ok=True)
            handle = Path(self.path(relative)).open("a")  # append mode: opening never truncates a file
        with handle:
            self._wait_for_lock(handle, dataset, relative, timeout_seconds)
            try:
                _record_holder(handle)
                yield
            finally:
                _record_holder(handle, holding=False)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _wait_for_lock(self, handle: io.TextIOBase, dataset: str, relative: str, timeout_seconds: float) -> None:
        """Take the lock on ``handle``, trying every LOCK_POLL_SECONDS while another process holds it (see
        ``_exclusive``)."""
        started, reported = time.monotonic(), None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                waited = time.monotonic() - started
            found = lock_holder(self.path(relative))
            holder = found.describe() if found else "another process (that has not recorded itself yet)"
            if waited >= timeout_seconds:
                raise LockTimeout(
                    f"{self.url(relative)}: the lock on {dataset} is still held by {holder} after waiting "
                    f"{timeout_seconds:g} s: let that process finish (or stop it), then run again"
                )
            if reported is None or waited - reported >= LOCK_REPORT_SECONDS:
                log.warning(
                    "waiting for the lock on %s held by %s (%s; waited %.0f s, giving up after %g s)",
                    dataset,
                    holder,
                    self.url(relative),
                    waited,
                    timeout_seconds,
                )
                reported = waited
            time.sleep(min(LOCK_POLL_SECONDS, timeout_seconds - waited))

    def _clear_leftovers(self, dataset: str) -> None:
        for area in AREAS:
            for leftover in self.files(f"{area}/dataset={dataset}", TMP_SUFFIX):
                self.delete(leftover)
        recorded = {sha[:16] for sha in self.manifest(dataset)}
        for area in ("interactions", "quarantine"):
            for part in self.files(f"{area}/dataset={dataset}", ".parquet"):
                if part.rsplit("-", 1)[-1].removesuffix(".parquet") not in recorded:
                    self.delete(part)

    # -- manifest ----------------------------------------------------------------------------------------------------
    def manifest(self, dataset: str) -> dict[str, ManifestEntry]:
        """The dataset's manifest entries by the content hash of their source file."""
        entries = []
        for relative in self._manifest_files(dataset):
            with self.reading(relative):
                entries.append(self._entry(relative))
        return {entry.sha256: entry for entry in entries}

    def record(self, dataset: str, entry: ManifestEntry) -> None:
        self.write_json(asdict(entry), f"manifest/dataset={dataset}/{entry.sha256}.json")

    def stray_files(self, dataset: str) -> list[str]:
        """Files in the dataset's manifest folder that are not manifest entries (ignored)."""
        folder = f"manifest/dataset={dataset}"
        return [p for p in self.files(folder) if not p.endswith(TMP_SUFFIX) and not _is_manifest_entry(folder, p)]

    def _manifest_files(self, dataset: str) -> list[str]:
        folder = f"manifest/dataset={dataset}"
        return [p for p in self.files(folder, ".json") if _is_manifest_entry(folder, p)]

    # -- reading -----------------------------------------------------------------------------------------------------
    def interaction_parts(self, dataset: str) -> list[str]:
        return self.files(f"interactions/dataset={dataset}", ".parquet")

    def scan_interactions(self, dataset: str) -> pl.LazyFrame | None:
        """All stored events of ``dataset`` (None when nothing is stored), without the hive partition columns."""
        parts = self._footers_checked(self.interaction_parts(dataset))
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
        parts = self._footers_checked(self.files(f"quarantine/dataset={dataset}", ".parquet"))
        return pl.scan_parquet([self.url(p) for p in parts], hive_partitioning=False) if parts else None

    def _footers_checked(self, parts: list[str]) -> list[str]:
        """``parts``, once each has been found to end in a readable Parquet footer (a truncated part is a StoreError
        naming it, before a scan fails on it without naming it)."""
        for part in parts:
            with self.reading(part):
                pq.read_metadata(self.path(part), filesystem=self.fs)
        return parts

    # -- damage and repair -------------------------------------------------------------------------------------------
    def damaged_files(self, dataset: str) -> list[Damage]:
        """Every stored file of ``dataset`` that cannot be read in full, and why."""
        damaged = []
        for relative, decode in self._decoders(dataset):
            try:
                decode(relative)
            except READ_ERRORS as exc:
                damaged.append(Damage(relative, read_problem(exc)))
        return damaged

    def _decoders(self, dataset: str) -> Iterator[tuple[str, Callable[[str], object]]]:
        """Each stored file of ``dataset`` with what reads it in full: the manifest entries, and the Parquet, JSON
        and ``.npy`` files of the other areas."""
        for relative in self._manifest_files(dataset):
            yield relative, self._entry
        by_suffix: dict[str, Callable[[str], object]] = {
            ".parquet": self._table,
            ".json": self._json_object,
            ".npy": self._array,
        }
        for area in AREAS:
            if area == "manifest":
                continue
            for relative in self.files(f"{area}/dataset={dataset}"):
                decode = by_suffix.get(posixpath.splitext(relative)[1])
                if decode is not None:
                    yield relative, decode

    def repair(self, dataset: str) -> list[str]:
        """Move every damaged file of ``dataset`` aside into ``damaged/<time>-<id>/`` (same relative path) with what
        depends on it, under the writer lock; returns what was moved. Nothing is deleted.

        A damaged part or manifest entry takes its source file's parts and entry along (the next ingest reads that
        source again); a damaged side table takes its manifest entries; a damaged file of a trajectory set or an
        environment takes its whole version (rebuilt when next needed), and a damaged ``CURRENT.json`` the
        dataset's trajectory sets.
        """
        with self._exclusive(dataset):
            destination = f"{DAMAGED}/{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
            moved: list[str] = []
            for damage in self.damaged_files(dataset):
                for piece in self._repair_unit(dataset, damage.relative):
                    if piece not in moved and self.exists(piece):
                        self._move(piece, f"{destination}/{piece}")
                        moved.append(piece)
            return moved

    def _repair_unit(self, dataset: str, relative: str) -> list[str]:
        """What moves aside with the damaged file ``relative`` (see ``repair``)."""
        area, name = relative.split("/", 1)[0], posixpath.basename(relative)
        if area in ("interactions", "quarantine", "manifest"):
            return [relative, *self._source_pieces(dataset, name.removeprefix("part-")[:16])]
        if area in ("items", "users"):
            return [relative, *self._entries_of_kind(dataset, area)]
        version = re.match(r"(.*?/version=[^/]+)/", relative)
        if version:
            return [version.group(1)]
        return [posixpath.dirname(relative)] if area == "trajectories" else [relative]

    def _source_pieces(self, dataset: str, sha16: str) -> list[str]:
        """The parts and manifest entries of the source file whose content hash starts with ``sha16``."""
        parts = [
            p
            for area in ("interactions", "quarantine")
            for p in self.files(f"{area}/dataset={dataset}", f"/part-{sha16}.parquet")
        ]
        return parts + [p for p in self._manifest_files(dataset) if posixpath.basename(p).startswith(sha16)]

    def _entries_of_kind(self, dataset: str, kind: str) -> list[str]:
        """The readable manifest entries of ``kind`` (``items`` or ``users``)."""
        entries = []
        for relative in self._manifest_files(dataset):
            with contextlib.suppress(*READ_ERRORS):
                if self._entry(relative).kind == kind:
                    entries.append(relative)
        return entries


def is_damage(exc: BaseException) -> bool:
    """Whether a failed read means the file is missing or damaged (rather than unreadable: no permission, I/O)."""
    return isinstance(exc, FileNotFoundError) or not (isinstance(exc, OSError) and exc.errno)


def read_problem(exc: BaseException) -> str:
    """A failed read in a few words: ``missing``, ``permission denied``, ``damaged (<what the reader said>)``."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if not is_damage(exc):
        return describe_os_error(exc)  # type: ignore[arg-type]
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"damaged ({detail[:160]})"


def _is_manifest_entry(folder: str, relative: str) -> bool:
    return (
        posixpath.dirname(relative) == folder
        and MANIFEST_ENTRY_NAME.fullmatch(posixpath.basename(relative)) is not None
    )


def lock_holder(path: str) -> LockHolder | None:
    """The holder recorded in the lock file at ``path``; None when there is no readable record, or when it names a
    process of this host that no longer runs (the record a killed holder left behind)."""
    try:
        fields = json.loads(Path(path).read_text())
        holder = LockHolder(int(fields["pid"]), str(fields["host"]), str(fields["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if holder.pid <= 0 or (holder.host == socket.gethostname() and not _process_runs(holder.pid)):
        return None
    return holder


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        pass
    return True


def _record_holder(handle: io.TextIOBase, holding: bool = True) -> None:
    """Write this process (pid, host, UTC start time) into the lock file ``handle``, or empty it when it is no
    longer ``holding`` the lock. The record only serves messages, so a failed write is ignored."""
    with contextlib.suppress(OSError):
        handle.truncate(0)
        if holding:
            since = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}))
        handle.flush()
