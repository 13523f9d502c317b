"""A held writer lock is reported at once and then periodically, and given up after the configured wait; a lock whose
holder was killed is taken over; a failed validation names the files whose rows failed."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdt4rec_core.data.store import LockTimeout, Store, lock_holder

READER_CLOCK_AHEAD = Path(__file__).parent / "fixtures" / "reader_clock_ahead"
"""On PYTHONPATH, a process reads future events as current ones: they fail the interaction suite."""
HOLDER = """
import sys, time
from mdt4rec_core.data.store import Store
with Store(sys.argv[1]).writer_lock(sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""
GOOD = "user_id,item_id,timestamp,feedback\nu1,i1,1700000000,1\nu1,i2,1700000100,2\nu2,i1,1700000200,3\n"


def hold_writer_lock(store: Path, dataset: str) -> subprocess.Popen:
    """A process holding the dataset's writer lock (it says so on stdout once it does)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), dataset], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _stop(process: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)
    process.wait(timeout=30)


def _ingest(source: Path, store: Path, *options: str, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "mdt4rec_cli", "ingest", "--source", str(source), "--format", "csv"]
    command += ["--dataset", "log", "--store", str(store), *options]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _lines_with_times(process: subprocess.Popen) -> list[tuple[float, str]]:
    """Each stderr line of ``process`` with when it arrived, until the process ends."""
    assert process.stderr is not None
    lines = [(time.monotonic(), line.rstrip("\n")) for line in process.stderr]
    process.wait(timeout=60)
    return lines


def test_a_held_lock_is_reported_at_once_and_given_up_after_the_configured_wait(tmp_path):
    (tmp_path / "log.csv").write_text(GOOD)
    store = tmp_path / "store"
    holder = hold_writer_lock(store, "log")
    try:
        ingest = _ingest(tmp_path / "log.csv", store, "--set", "ingest.lock_timeout_seconds=3")
        lines = _lines_with_times(ingest)
    finally:
        _stop(holder)
    waiting = [(at, line) for at, line in lines if "waiting for the lock on log held by" in line]
    assert waiting, "\n".join(line for _, line in lines)
    first_at, first = waiting[0]
    assert f"held by pid {holder.pid} since " in first and "waited 0 s, giving up after 3 s" in first
    errors = [line for _, line in lines if line.startswith("error:")]
    assert len(errors) == 1 and f"the lock on log is still held by pid {holder.pid}" in errors[0]
    assert "after waiting 3 s" in errors[0] and errors[0].startswith(f"error: {store / '.locks' / 'log.lock'}: ")
    assert ingest.returncode == 2
    assert lines[-1][0] - first_at >= 2.5  # it gave up after the wait, not at once


def test_the_lock_of_a_killed_holder_is_taken_over_and_its_record_is_not_reported(tmp_path):
    (tmp_path / "log.csv").write_text(GOOD)
    store = tmp_path / "store"
    holder = hold_writer_lock(store, "log")
    try:
        lock = store / ".locks" / "log.lock"
        assert lock_holder(str(lock)).pid == holder.pid
    finally:
        _stop(holder, signal.SIGKILL)
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the killed holder's record stays behind ...
    assert lock_holder(str(lock)) is None  # ... and is known to be stale
    ingest = _ingest(tmp_path / "log.csv", store, "--set", "ingest.lock_timeout_seconds=3")
    lines = _lines_with_times(ingest)
    assert ingest.returncode == 0, "\n".join(line for _, line in lines)
    assert not any("waiting for the lock" in line for _, line in lines)
    assert lock.read_text() == ""  # released: no holder recorded


def test_the_wait_is_reported_periodically_in_the_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("mdt4rec_core.data.store.LOCK_REPORT_SECONDS", 0.5)
    holder = hold_writer_lock(tmp_path / "store", "log")
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="mdt4rec_core"), pytest.raises(LockTimeout) as timeout:
            with Store(tmp_path / "store").writer_lock("log", timeout_seconds=1.6):
                pass
    finally:
        _stop(holder)
    assert 1.6 <= time.monotonic() - started < 5
    reports = [r.getMessage() for r in caplog.records if r.name == "mdt4rec_core.data.store"]
    assert len(reports) >= 3, reports  # at once, then every half second (give or take a poll)
    assert all(f"waiting for the lock on log held by pid {holder.pid} since " in r for r in reports)
    assert "waited 0 s, giving up after 1.6 s" in reports[0]
    assert f"still held by pid {holder.pid}" in str(timeout.value)


def test_a_failed_validation_names_the_file_whose_rows_failed(tmp_path):
    source = tmp_path / "landing"
    source.mkdir()
    (source / "a-good.csv").write_text(GOOD)
    (source / "b-future.csv").write_text("user_id,item_id,timestamp,feedback\nu3,i1,2999-01-01T00:00:00Z,1\n")
    ingest = _ingest(source, tmp_path / "store", env={"PYTHONPATH": str(READER_CLOCK_AHEAD)})
    lines = [line for _, line in _lines_with_times(ingest)]
    assert ingest.returncode == 2
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {source / 'b-future.csv'}: suite 'interactions': ")
    assert "a-good.csv" not in "\n".join(lines)
    failure = next(line for line in lines if "FAILED expect_column_max_to_be_between(timestamp)" in line)
    assert "observed 2999-01-01" in failure and "unexpected" not in failure
    assert not (tmp_path / "store" / "interactions").exists()


def test_the_files_whose_rows_fail_are_found_and_named(tmp_path):
    import datetime as dt

    import polars as pl

    from tasks.validation import ValidationReport, failure_message, files_failing_interactions

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i1", "i2"],
            "timestamp": [now - dt.timedelta(days=1), now + dt.timedelta(days=400), now - dt.timedelta(days=2)],
            "feedback": [1.0, 2.0, 3.0],
            "source_file": ["a.csv", "b.csv", "c.csv"],
        }
    )
    assert files_failing_interactions(rows, now) == ["b.csv"]
    report = ValidationReport("interactions", rows=9)
    sources = [f"{name}.csv" for name in "abcde"]
    lines = failure_message(report, sources).splitlines()
    assert (
        lines[0]
        == "a.csv, b.csv, c.csv (and 2 more, listed below): suite 'interactions': 0/0 expectations met on 9 rows"
    )
    assert lines[-1] == "  rows failed in: a.csv, b.csv, c.csv, d.csv, e.csv"
    assert failure_message(report, ["b.csv"]).startswith("b.csv: suite 'interactions': ")


def test_a_failed_trajectory_bucket_names_the_part_it_would_have_been_saved_as(ingest, tmp_path, monkeypatch):
    from tasks.validation import ExpectationOutcome, ValidationFailed, ValidationReport

    outcome = ExpectationOutcome("expect_column_values_to_be_between", "reward", False, 1, [2.0])
    monkeypatch.setattr("tasks.ingest.validate_trajectories", lambda *_: ValidationReport("trajectories", 3, [outcome]))
    (tmp_path / "log.csv").write_text(GOOD)
    with pytest.raises(ValidationFailed) as failure:
        ingest(tmp_path / "log.csv")
    first = str(failure.value).splitlines()[0]
    folder = f"{tmp_path / 'store'}/trajectories/dataset=log/version="
    assert first.startswith(folder) and first.endswith(
        "/steps/part-00000.parquet (not saved): suite 'trajectories': 0/1 expectations met on 3 rows"
    )
