"""A hostile store: dataset names that lead outside it, damaged or stray stored files, a full or read-only disk.

Each case is run as a user runs it (the ``mdt4rec`` command: in a process of its own for the first case, in-process
through the same command-line app for the others, so that a full disk can be simulated) and ends in one ``error:``
line naming the file and what to do, exit status 2 and no traceback, with nothing outside the store touched.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mdt4rec_cli.main import app
from mdt4rec_core.data.store import Store
from mdt4rec_core.errors import ConfigError, StoreError

HEADER = "user_id,item_id,timestamp,feedback\n"
SOURCES = {
    "a.csv": "u1,i1,1700000000,1\nu1,i2,1700000060,2\nu2,i1,1700000000,3\n",
    "b.csv": "u3,i2,1700000000,4\nu3,i3,1700000100,5\n",
    "c.csv": "u4,i1,1700000000,1\nu4,i3,1700000200,2\n",
}
ROWS = 7


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def last_json(self) -> dict:
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout.strip().splitlines()[-1])


def mdt4rec_process(*args) -> Run:
    """``mdt4rec ARGS`` in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "mdt4rec_cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    return Run(done.returncode, done.stdout, done.stderr)


def mdt4rec(*args) -> Run:
    """``mdt4rec ARGS`` in this process; an exception other than the command's exit fails the test."""
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def one_error(result: Run) -> str:
    """The single ``error:`` line of a run that exited with status 2 without a traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime) of every file and folder below ``folder`` (except the subfolders ``skip``)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not any(relative == name or relative.startswith(f"{name}/") for name in skip):
            info = path.lstat()
            entries[relative] = (info.st_size if path.is_file() else 0, info.st_mtime_ns)
    return entries


UNTOUCHED_BY_DATA = ("reports", ".locks")
"""Store folders every run writes (Data Docs, the writer lock's holder record), whatever the data."""


def data_files(store: Path) -> list[str]:
    """The stored data files (everything but Data Docs and locks)."""
    return sorted(
        p.relative_to(store).as_posix()
        for p in store.rglob("*")
        if p.is_file() and p.relative_to(store).parts[0] not in UNTOUCHED_BY_DATA
    )


def ingest_args(sources: Path, store: Path) -> list:
    return ["ingest", "--dataset", "log", "--source", sources, "--format", "csv", "--store", store]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A store holding the three source files of ``log`` (ingested once per module), and the sources' folder."""
    root = tmp_path_factory.mktemp("base")
    sources = root / "sources"
    sources.mkdir()
    for name, rows in SOURCES.items():
        (sources / name).write_text(HEADER + rows)
    mdt4rec(*ingest_args(sources, root / "store"), "--json").last_json()
    return root


@pytest.fixture
def world(base, tmp_path):
    """A copy of the base store under ``tmp_path/store``, its sources, and a sibling folder with a file to lose."""
    shutil.copytree(base / "store", tmp_path / "store")
    shutil.copytree(base / "sources", tmp_path / "sources")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.lock").write_text("precious\n")
    return tmp_path


def part_of(store: Path, source: str) -> Path:
    """The stored interaction part of one source file."""
    entry = next(
        p for p in (store / "manifest").rglob("*.json") if json.loads(p.read_text())["source"].endswith(source)
    )
    return next((store / "interactions").rglob(f"part-{entry.stem[:16]}.parquet"))


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# -- names and paths -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "run, command, name",
    [
        (mdt4rec_process, "ingest", "../../../../outside/victim"),
        (mdt4rec, "ingest", "a/b"),
        (mdt4rec, "train", "../../outside"),
        (mdt4rec, "validate", "/etc"),
        (mdt4rec, "build-env", ".."),
    ],
)
def test_dataset_names_that_are_not_safe_identifiers_are_refused(world, run, command, name):
    before = snapshot(world)
    args = ["--source", world / "sources", "--format", "csv"] if command == "ingest" else []
    result = run(command, "--dataset", name, "--store", world / "store", *args)
    assert one_error(result) == (
        f"error: dataset name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
        "letter or digit, without '..'"
    )
    assert snapshot(world) == before  # the store and everything beside it untouched


def test_store_paths_and_locks_stay_inside_the_store(world):
    store = Store(world / "store")
    before = snapshot(world)
    with pytest.raises(
        StoreError, match=r"^manifest/dataset=x/\.\./\.\./\.\./outside/x\.json: leads outside the store "
    ):
        store.write_json({}, "manifest/dataset=x/../../../outside/x.json")
    with pytest.raises(StoreError, match="leads outside the store"):
        store.read_json("../outside/victim.lock")
    with pytest.raises(StoreError, match="leads outside the store"):
        store.path(".locks", "../../outside/victim.lock")
    with pytest.raises(ConfigError, match="dataset name '../outside/victim' is not allowed"):
        with store.writer_lock("../outside/victim"):
            pass
    assert snapshot(world) == before


def test_a_store_that_is_a_file_is_one_error_line(world):
    not_a_folder = world / "outside" / "victim.lock"
    before = snapshot(world)
    result = mdt4rec(*ingest_args(world / "sources", not_a_folder))
    assert one_error(result) == f"error: {not_a_folder}: is a file, not a store folder (a missing folder is created)"
    assert snapshot(world) == before


# -- damaged and stray stored files ----------------------------------------------------------------------------------
def remedy(world: Path) -> str:
    return (
        f"`mdt4rec validate --repair --dataset log --store {world / 'store'}` moves it aside, then "
        "`mdt4rec ingest --dataset log` rebuilds it from the sources"
    )


def test_a_truncated_interaction_part_stops_ingest_naming_it(world):
    part = part_of(world / "store", "a.csv")
    truncate(part)
    (world / "sources" / "d.csv").write_text(HEADER + "u5,i1,1700000000,1\n")
    before = snapshot(world / "store", skip=UNTOUCHED_BY_DATA)
    error = one_error(mdt4rec(*ingest_args(world / "sources", world / "store")))
    assert error.startswith(f"error: {part}: damaged (") and error.endswith(remedy(world))
    assert snapshot(world / "store", skip=UNTOUCHED_BY_DATA) == before


def test_a_truncated_manifest_entry_stops_ingest_naming_it(world):
    entry = next((world / "store" / "manifest").rglob("*.json"))
    truncate(entry)
    before = snapshot(world / "store", skip=UNTOUCHED_BY_DATA)
    error = one_error(mdt4rec(*ingest_args(world / "sources", world / "store")))
    assert error.startswith(f"error: {entry}: damaged (") and error.endswith(remedy(world))
    assert snapshot(world / "store", skip=UNTOUCHED_BY_DATA) == before


def test_a_damaged_trajectory_part_stops_train_naming_it(world):
    part = next((world / "store" / "trajectories").rglob("steps/part-*.parquet"))
    data = bytearray(part.read_bytes())
    data[4:-8] = bytes(len(data) - 12)  # zeros between the magic bytes: no readable page or footer
    part.write_bytes(bytes(data))
    result = mdt4rec("train", "--dataset", "log", "--store", world / "store", "--out", world / "run", "--max-steps", 1)
    error = one_error(result)
    assert error.startswith(f"error: {part}: damaged (") and error.endswith(remedy(world))
    assert not (world / "run" / "checkpoint").exists()


def test_validate_lists_every_damaged_file_and_repair_moves_them_aside(world):
    store = world / "store"
    part_a = part_of(store, "a.csv")
    entry_b = next(p for p in (store / "manifest").rglob("*.json") if p.stem[:16] == part_of(store, "b.csv").stem[5:])
    steps = next((store / "trajectories").rglob("steps/part-*.parquet"))
    for damaged in (part_a, entry_b, steps):
        truncate(damaged)
    result = mdt4rec("validate", "--dataset", "log", "--store", store)
    error = one_error(result)
    named = [line for line in result.stderr.splitlines() if any(str(p) in line for p in (part_a, entry_b, steps))]
    assert len(named) == 3 and error == next(line for line in named if line.startswith("error:"))
    assert "(and 2 more damaged files, listed above)" in error

    report = mdt4rec("validate", "--dataset", "log", "--store", store, "--repair", "--json").last_json()
    moved = {Path(p).relative_to(store).as_posix() for p in report["repaired"]}
    assert part_a.relative_to(store).as_posix() in moved and entry_b.relative_to(store).as_posix() in moved
    assert steps.parent.parent.relative_to(store).as_posix() in moved  # the whole trajectory version
    assert report["success"] and report["suites"][0]["rows"] == len(SOURCES["c.csv"].splitlines())
    assert len(list((store / "damaged").rglob("*.parquet"))) >= 3  # moved aside, nothing deleted

    summary = mdt4rec(*ingest_args(world / "sources", store), "--json").last_json()
    assert (summary["files_ingested"], summary["files_skipped"], summary["steps"]) == (2, 1, ROWS)


def test_a_stray_file_in_the_manifest_folder_is_ignored_and_listed(world):
    folder = next((world / "store" / "manifest").iterdir())
    (folder / "notes.json").write_text('{"written by": "a person"}')
    (folder / "README").write_text("hands off\n")
    (world / "sources" / "d.csv").write_text(HEADER + "u5,i1,1700000000,1\n")
    assert mdt4rec(*ingest_args(world / "sources", world / "store"), "--json").last_json()["files_ingested"] == 1
    validated = mdt4rec("validate", "--dataset", "log", "--store", world / "store")
    assert validated.returncode == 0, validated.stderr
    ignored = [line for line in validated.stderr.splitlines() if line.startswith("ignored (not a manifest entry): ")]
    assert ignored == [f"ignored (not a manifest entry): {folder / name}" for name in ("README", "notes.json")]


def test_a_damaged_environment_file_is_named_and_repaired(ingest, tmp_path):
    from tests.conftest import FIXTURES

    ingest(FIXTURES / "coat", format=None, dataset="coat")  # builds the simulator its episodes are cut by
    store = tmp_path / "store"
    rewards = next((store / "environments").rglob("rewards.npy"))
    truncate(rewards, keep=60)
    error = one_error(mdt4rec("build-env", "--dataset", "coat", "--store", store))
    assert error.startswith(f"error: {rewards}: damaged (") and "mdt4rec validate --repair --dataset coat" in error

    repaired = mdt4rec("validate", "--dataset", "coat", "--store", store, "--repair", "--json").last_json()
    assert repaired["repaired"] == [str(rewards.parent)]
    assert mdt4rec("build-env", "--dataset", "coat", "--store", store, "--json").last_json()["built"]


# -- full disk, no permission ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, words", [(errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied")]
)
def test_a_failed_write_is_one_error_line_and_leaves_nothing_half_written(world, monkeypatch, code, words):
    store = world / "store"
    (world / "sources" / "d.csv").write_text(HEADER + "u5,i1,1700000000,1\n")
    before = data_files(store)

    def failing_write(table, where, **kwargs):
        with kwargs["filesystem"].open_output_stream(where) as half:
            half.write(b"PAR1 half")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(pq, "write_table", failing_write)
    error = one_error(mdt4rec(*ingest_args(world / "sources", store)))
    assert error.startswith(f"error: {store}/interactions/dataset=log/") and error.endswith(
        f".parquet: cannot write ({words}); nothing was half-written: run again once that is fixed"
    )
    assert data_files(store) == before  # no part, no manifest entry, no temporary file


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_store_is_one_error_line(world):
    store = world / "store"
    (world / "sources" / "d.csv").write_text(HEADER + "u5,i1,1700000000,1\n")
    folders = [p for p in store.rglob("*") if p.is_dir() and p.relative_to(store).parts[0] != ".locks"]
    before = data_files(store)
    for folder in folders:
        folder.chmod(0o555)
    try:
        error = one_error(mdt4rec_process(*ingest_args(world / "sources", store)))
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert error.startswith(f"error: {store}/") and "(permission denied)" in error
    assert data_files(store) == before
