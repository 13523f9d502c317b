"""Bad input: good rows are stored, bad rows quarantined with file, row, field and reason, and counts add up."""

import subprocess
import sys

import polars as pl
import pytest

from mdt4rec_core.errors import InputError
from tests.conftest import quarantined, stored

HEADER = "user_id,item_id,timestamp,feedback\n"
GOOD = "u1,i1,1700000000,4\nu1,i2,1700000100,3\nu2,i1,2024-01-02T03:04:05Z,5\n"


def _write(path, text):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _accounted(summary, store):
    assert summary["rows_read"] == summary["rows_accepted"] + summary["rows_quarantined"]
    assert stored(store).height == summary["rows_accepted"]
    assert quarantined(store).height == summary["rows_quarantined"]


def _only_problem(store):
    rows = quarantined(store)
    assert rows.height == 1, rows
    return rows.row(0, named=True)


def test_good_file(ingest, tmp_path):
    summary, store = ingest(_write(tmp_path / "log.csv", HEADER + GOOD))
    assert summary["rows_accepted"] == 3 and summary["rows_quarantined"] == 0
    _accounted(summary, store)


def test_empty_file_is_an_error_naming_the_file(ingest, tmp_path):
    path = _write(tmp_path / "empty.csv", "")
    with pytest.raises(InputError, match=r"empty\.csv: empty file"):
        ingest(path)


def test_header_only_reads_nothing_and_completes(ingest, tmp_path):
    path = _write(tmp_path / "header.csv", HEADER)
    summary, store = ingest(path)
    assert (summary["rows_read"], summary["files_ingested"], summary["steps"]) == (0, 1, 0)
    assert summary["trajectory_version"] is None
    _write(tmp_path / "good.csv", HEADER + GOOD)
    summary, store = ingest(tmp_path)
    assert (summary["rows_read"], summary["files_ingested"], summary["files_skipped"]) == (3, 1, 1)
    _accounted(summary, store)


def test_missing_required_column(ingest, tmp_path):
    _write(tmp_path / "a_good.csv", HEADER + GOOD)
    bad = _write(tmp_path / "b_nostamp.csv", "user_id,item_id,feedback\nu9,i9,1\nu9,i8,2\n")
    summary, store = ingest(tmp_path)
    assert summary["rows_accepted"] == 3 and summary["rows_quarantined"] == 2
    assert "missing required column 'timestamp'" in summary["file_errors"][str(bad)]
    rows = quarantined(store).filter(pl.col("file") == str(bad))
    assert rows["row"].to_list() == [2, 3] and set(rows["field"]) == {"file"}
    _accounted(summary, store)


def test_missing_required_column_alone_fails_the_run(ingest, tmp_path):
    bad = _write(tmp_path / "nostamp.csv", "user_id,item_id,feedback\nu9,i9,1\n")
    with pytest.raises(InputError, match=r"nostamp\.csv: missing required column 'timestamp'"):
        ingest(bad)


@pytest.mark.parametrize(
    "line, field, reason",
    [
        ("u3,i3,yesterday,4", "timestamp", "unparsable timestamp 'yesterday'"),
        ("u3,i3,2024-13-45T00:00:00,4", "timestamp", "unparsable timestamp"),
        ("u3,i3,1700000000,high", "feedback", "not a number: 'high'"),
        ("u3,i3,1700000000,-1", "feedback", "negative: -1.0"),
        ("u3,i3,1700000000,NaN", "feedback", "NaN"),
        ("u3,i3,1700000000,inf", "feedback", "infinite: 'inf'"),
        ("u3,i3,1700000000,", "feedback", "missing value"),
        (",i3,1700000000,1", "user_id", "missing value"),
        ("u3,,1700000000,1", "item_id", "missing value"),
        ("u3,i3,1700000000,1,extra", "row", "expected 4 fields, found 5"),
        ("u3,i3,1700000000", "row", "expected 4 fields, found 3"),
    ],
)
def test_bad_row_is_quarantined_with_row_and_field(ingest, tmp_path, line, field, reason):
    path = _write(tmp_path / "log.csv", HEADER + GOOD + line + "\n")
    summary, store = ingest(path)
    problem = _only_problem(store)
    assert (problem["file"], problem["row"], problem["field"]) == (str(path), 5, field)
    assert reason in problem["reason"]
    assert problem["raw"] == line
    assert summary["rows_accepted"] == 3
    _accounted(summary, store)


def test_duplicate_events_keep_the_first(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", HEADER + GOOD + "u1,i1,1700000000,2\n")
    summary, store = ingest(path)
    problem = _only_problem(store)
    assert problem["row"] == 5 and problem["field"] == "user_id,item_id,timestamp"
    assert f"of row 2 in {path}" in problem["reason"]
    assert stored(store).filter(pl.col("user_id") == "u1", pl.col("item_id") == "i1")["feedback"].to_list() == [4.0]
    _accounted(summary, store)


def test_duplicate_of_an_event_stored_by_an_earlier_file(ingest, tmp_path):
    _write(tmp_path / "day1.csv", HEADER + GOOD)
    ingest(tmp_path)
    _write(tmp_path / "day2.csv", HEADER + "u1,i1,1700000000,4\nu5,i5,1700000000,1\n")
    summary, store = ingest(tmp_path)
    assert summary["files_skipped"] == 1 and summary["rows_accepted"] == 1 and summary["rows_quarantined"] == 1
    assert "already stored" in quarantined(store)["reason"][0]
    assert stored(store).height == 4


def test_non_utf8_bytes(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", (HEADER + GOOD).encode() + b"u4,caf\xe9,1700000000,1\n")
    summary, store = ingest(path)
    problem = _only_problem(store)
    assert (problem["row"], problem["field"], problem["reason"]) == (5, "row", "row is not valid UTF-8")
    _accounted(summary, store)


def test_file_truncated_mid_line(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", HEADER + GOOD + "u4,i4,17000")
    summary, store = ingest(path)
    problem = _only_problem(store)
    assert problem["row"] == 5 and "no line terminator" in problem["reason"]
    _accounted(summary, store)


def test_quoted_fields_and_crlf(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", 'user_id,item_id,timestamp,feedback\r\nu1,"Movie, The (1999)",1700000000,4\r\n')
    summary, store = ingest(path)
    assert summary["rows_accepted"] == 1
    assert stored(store)["item_id"][0] == "Movie, The (1999)"


def test_directory_mixing_good_and_bad_files(ingest, tmp_path):
    _write(tmp_path / "a.csv", HEADER + GOOD)
    _write(tmp_path / "b.csv", "")
    _write(tmp_path / "c.csv", HEADER + "u7,i7,soon,1\nu7,i8,1700000000,2\n")
    _write(tmp_path / "d.csv", (HEADER + "u8,i8,1700000000,1\n").encode() + b"\xff\xfe,x,y,z\n")
    summary, store = ingest(tmp_path)
    assert summary["files_ingested"] == 4
    assert summary["rows_accepted"] == 5 and summary["rows_quarantined"] == 2
    assert summary["file_errors"] == {str(tmp_path / "b.csv"): "empty file: no header line"}
    assert set(quarantined(store)["file"]) == {str(tmp_path / "c.csv"), str(tmp_path / "d.csv")}
    _accounted(summary, store)


def test_reingesting_is_a_no_op(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", HEADER + GOOD + "u3,i3,bad,1\n")
    first, store = ingest(path)
    again, store = ingest(path)
    assert (again["files_ingested"], again["files_skipped"], again["rows_read"]) == (0, 1, 0)
    assert not again["trajectories_built"] and again["trajectory_version"] == first["trajectory_version"]
    assert stored(store).height == 3 and quarantined(store).height == 1


def test_cli_error_is_one_line_naming_the_cause(tmp_path):
    _write(tmp_path / "empty.csv", "")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdt4rec_cli",
            "ingest",
            "--source",
            str(tmp_path / "empty.csv"),
            "--format",
            "csv",
            "--dataset",
            "x",
            "--store",
            str(tmp_path / "store"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'empty.csv'}: empty file: no header line"]
    assert result.stdout == ""


def test_batches_are_stored_one_by_one_and_deduplicated_across(tmp_path):
    from mdt4rec_core.config import IngestConfig, RunConfig, resolve_dataset
    from mdt4rec_core.data.store import Store
    from tasks.ingest import run_ingest

    logs = tmp_path / "logs"
    logs.mkdir()
    _write(logs / "a.csv", HEADER + GOOD)
    _write(logs / "b.csv", HEADER + "u1,i1,1700000000,4\nu9,i9,1700000000,1\n")  # first row repeats a.csv row 2
    _write(logs / "c.csv", HEADER + "u9,i9,1700000000,1\nu9,i8,1700000001,1\n")  # first row repeats b.csv row 3
    config = RunConfig(dataset="log", store=str(tmp_path / "store"), ingest=IngestConfig(batch_megabytes=1e-6))
    summary = run_ingest(config, resolve_dataset("log", str(logs), "csv"))
    assert summary["batches"] == 3
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_quarantined"]) == (7, 5, 2)
    store = Store(tmp_path / "store")
    assert set(quarantined(store)["reason"]) == {"duplicate event (user_id, item_id, timestamp) already stored"}
    _accounted(summary, store)
