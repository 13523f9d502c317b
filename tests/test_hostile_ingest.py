"""Hostile input to ingestion: clock skew, timestamp units, control bytes, odd line endings and headers, nested and
exotic Parquet columns, identical files, out-of-range values and files changed in place. Good rows are stored, bad
rows quarantined with the field and the reason, unusable files reported while the rest of the batch goes on."""

import datetime as dt
import json
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdt4rec_core.config import IngestConfig, RunConfig, resolve_dataset
from mdt4rec_core.data.ingest import IngestReport, commit, plan_ingest, read_batch
from mdt4rec_core.data.store import Store
from mdt4rec_core.errors import InputError
from tests.conftest import quarantined, stored

HEADER = "user_id,item_id,timestamp,feedback\n"
GOOD = "u1,i1,1700000000,4\nu1,i2,1700000100,3\nu2,i1,1700000200,5\n"


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _ingest(tmp_path, source, format="csv", **ingest):
    """The plain ingest chain on ``source`` as the ad-hoc dataset ``log`` with ``ingest`` settings."""
    from tasks.ingest import run_ingest

    config = RunConfig(dataset="log", store=str(tmp_path / "store"), ingest=IngestConfig(**ingest))
    return run_ingest(config, resolve_dataset("log", str(source), format)), Store(tmp_path / "store")


def _cli_ingest(tmp_path, source, *options, format="csv"):
    command = [sys.executable, "-m", "mdt4rec_cli", "ingest", "--source", str(source), "--format", format]
    command += ["--dataset", "log", "--store", str(tmp_path / "store"), "--json", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _accounted(summary, store):
    assert summary["rows_read"] == summary["rows_accepted"] + summary["rows_quarantined"]
    assert stored(store).height == summary["rows_accepted"]
    assert quarantined(store).height == summary["rows_quarantined"]


def _reasons(store, path):
    rows = quarantined(store).filter(pl.col("file") == str(path))
    return list(zip(rows["row"], rows["field"], rows["reason"], strict=True))


def _epoch(moment):
    return int(moment.timestamp())


# -- timestamps ----------------------------------------------------------------------------------------------------


def test_an_event_a_few_days_ahead_is_quarantined_and_the_rest_stored(ingest, tmp_path):
    ahead = _epoch(dt.datetime.now(dt.UTC) + dt.timedelta(days=3))
    rows = "".join(f"u{k % 30},i{k},{1_700_000_000 + k},{k % 5}\n" for k in range(1_049))
    path = _write(tmp_path / "log.csv", HEADER + rows + f"u9,i9,{ahead},1\n")
    summary, store = ingest(path)
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_quarantined"]) == (1_050, 1_049, 1)
    ((row, field, reason),) = _reasons(store, path)
    assert (row, field) == (1_051, "timestamp")
    assert reason.startswith("in the future (after ") and reason.endswith(f"UTC): '{ahead}'")
    _accounted(summary, store)


def test_an_event_within_a_day_ahead_is_accepted(ingest, tmp_path):
    soon = _epoch(dt.datetime.now(dt.UTC) + dt.timedelta(hours=20))
    summary, store = ingest(_write(tmp_path / "log.csv", HEADER + GOOD + f"u9,i9,{soon},1\n"))
    assert (summary["rows_accepted"], summary["rows_quarantined"]) == (4, 0)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("-5", "before 1970-01-01: '-5'"),
        ("1969-12-31T23:59:59Z", "before 1970-01-01: '1969-12-31T23:59:59Z'"),
        ("99999999999999999999", "out of range: '99999999999999999999'"),
        ("9999-01-01", "in the future (after "),
    ],
)
def test_out_of_range_timestamps_are_quarantined(ingest, tmp_path, value, reason):
    path = _write(tmp_path / "log.csv", HEADER + GOOD + f"u9,i9,{value},1\n")
    summary, store = ingest(path)
    ((row, field, found),) = _reasons(store, path)
    assert (row, field) == (5, "timestamp") and found.startswith(reason)
    assert summary["rows_accepted"] == 3
    _accounted(summary, store)


@pytest.mark.parametrize(
    "unit, stamps",
    [
        ("s", ["1700000000", "1700000100"]),
        ("ms", ["1700000000000", "1700000100000"]),
        ("us", ["1700000000000000", "1700000100000000"]),
        ("iso", ["2023-11-14T22:13:20Z", "2023-11-14 22:15:00"]),
    ],
)
def test_timestamp_unit_of_an_ad_hoc_dataset(tmp_path, unit, stamps):
    path = _write(tmp_path / "log.csv", HEADER + "".join(f"u1,i{k},{t},1\n" for k, t in enumerate(stamps)))
    summary, store = _ingest(tmp_path, path, timestamp_unit=unit)
    assert summary["rows_accepted"] == 2
    times = stored(store).sort("item_id")["timestamp"].to_list()
    assert times == [
        dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC),
        dt.datetime(2023, 11, 14, 22, 15, tzinfo=dt.UTC),
    ]


def test_iso_unit_quarantines_a_stray_epoch_number(tmp_path):
    path = _write(tmp_path / "log.csv", HEADER + "u1,i1,2024-01-01,1\nu1,i2,2024-01-02,1\nu1,i3,1700000000,1\n")
    summary, store = _ingest(tmp_path, path, timestamp_unit="iso")
    assert _reasons(store, path) == [(4, "timestamp", "an epoch number, but timestamp_unit is iso: '1700000000'")]
    _accounted(summary, store)


@pytest.mark.parametrize(
    "unit, stamps, suggested",
    [
        ("s", [1_700_000_000_000, 1_700_000_100_000], "ms"),
        ("s", [1_700_000_000_000_000, 1_700_000_100_000_000], "us"),
        ("ms", [1_700_000_000, 1_700_000_100], "s"),
        ("iso", [1_700_000_000, 1_700_000_100], "s"),
    ],
)
def test_a_unit_that_puts_most_rows_decades_away_is_an_error_suggesting_the_unit(tmp_path, unit, stamps, suggested):
    path = _write(tmp_path / "log.csv", HEADER + "".join(f"u1,i{k},{t},1\n" for k, t in enumerate(stamps)))
    with pytest.raises(InputError) as error:
        _ingest(tmp_path, path, timestamp_unit=unit)
    message = str(error.value)
    assert message.startswith(f"{path}: row 2, field timestamp: 2 of 2 timestamps (e.g. '{stamps[0]}') ")
    assert message.endswith(
        f"set timestamp_unit: {suggested} (in the dataset's YAML, or --set ingest.timestamp_unit={suggested})"
    )
    assert not (tmp_path / "store" / "manifest").exists()


def test_milliseconds_from_the_cli_fail_with_one_line_then_ingest_with_the_unit(tmp_path):
    sibling = _write(tmp_path / "sibling" / "keep.txt", "untouched")
    rows = "".join(f"u{k % 7},i{k},{1_700_000_000_000 + 1000 * k},{k % 5}\n" for k in range(1_050))
    path = _write(tmp_path / "logs" / "clicks.csv", HEADER + rows)
    refused = _cli_ingest(tmp_path, path)
    assert refused.returncode == 2 and refused.stdout == ""
    (line,) = _error_lines(refused)
    assert line.startswith(f"error: {path}: row 2, field timestamp: 1,050 of 1,050 timestamps")
    assert "they look like milliseconds: set timestamp_unit: ms" in line
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "store" / "manifest").exists()
    accepted = _cli_ingest(tmp_path, path, "--set", "ingest.timestamp_unit=ms")
    assert accepted.returncode == 0, accepted.stderr
    summary = json.loads(accepted.stdout.splitlines()[-1])
    assert (summary["rows_accepted"], summary["rows_quarantined"]) == (1_050, 0)
    assert sibling.read_text() == "untouched" and [p.name for p in sibling.parent.iterdir()] == ["keep.txt"]


# -- bytes, line endings and headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("byte", [b"\x1f", b"\x00", b"\r"])
def test_a_control_byte_quarantines_its_row(ingest, tmp_path, byte):
    path = _write(tmp_path / "log.csv", (HEADER + GOOD).encode() + b"u4,i" + byte + b"4,1700000000,1\n")
    summary, store = ingest(path)
    code = f"0x{byte[0]:02X}"
    assert _reasons(store, path) == [(5, "row", f"control character {code} in the row")]
    assert summary["rows_accepted"] == 3
    _accounted(summary, store)


def test_a_file_holding_every_control_byte_is_not_a_text_file(ingest, tmp_path):
    _write(tmp_path / "a.csv", HEADER + GOOD)
    binary = _write(tmp_path / "b.csv", bytes(range(256)) * 4)
    summary, store = ingest(tmp_path)
    assert summary["file_errors"] == {str(binary): "not a text file: it holds every ASCII control character"}
    assert summary["rows_accepted"] == 3
    _accounted(summary, store)


def test_cr_only_line_endings(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", (HEADER + GOOD).replace("\n", "\r"))
    summary, store = ingest(path)
    assert (summary["rows_accepted"], summary["rows_quarantined"]) == (3, 0)
    assert sorted(stored(store)["source_row"].to_list()) == [2, 3, 4]


def test_cr_only_file_cut_mid_line(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", (HEADER + GOOD).replace("\n", "\r") + "u4,i4,17")
    summary, store = ingest(path)
    assert _reasons(store, path) == [(5, "row", "last line has no line terminator (file truncated?)")]
    _accounted(summary, store)


@pytest.mark.parametrize(
    "header, reason",
    [
        ("user_id,item_id,timestamp,feedback,feedback", "unusable header: column 'feedback' appears 2 times"),
        ("user_id,item_id,timestamp,feedback,x\x1fy", "unusable header: column 5 name 'x\\x1fy' holds a control"),
        ("user_id,item_id,timestamp,feedback,_mdt4rec_row", "unusable header: column '_mdt4rec_row' starts with"),
        ("user_id,item_id,timestamp,feedback,source_file", "unusable header: column 'source_file' would clash"),
        ("user_id,item_id,timestamp,feedback,source_row", "unusable header: column 'source_row' would clash"),
    ],
)
def test_an_unusable_header_quarantines_its_file_and_the_batch_goes_on(ingest, tmp_path, header, reason):
    _write(tmp_path / "a.csv", HEADER + GOOD)
    bad = _write(tmp_path / "b.csv", header + "\nu7,i7,1700000000,1,x\nu7,i8,1700000000,2,y\n")
    summary, store = ingest(tmp_path)
    assert summary["file_errors"][str(bad)].startswith(reason)
    assert [(row, field) for row, field, _ in _reasons(store, bad)] == [(2, "file"), (3, "file")]
    assert summary["rows_accepted"] == 3
    entry = next(e for e in store.manifest("log").values() if e.source == str(bad))
    assert (entry.rows_read, entry.rows_accepted, entry.rows_quarantined) == (2, 0, 2)
    assert entry.file_error == summary["file_errors"][str(bad)]
    _accounted(summary, store)


@pytest.mark.parametrize("name", ["_row", "_hash", "_source_user_id"])
def test_a_column_named_like_an_internal_one_is_kept_as_it_is(ingest, tmp_path, name):
    path = _write(tmp_path / "log.csv", f"user_id,item_id,timestamp,feedback,{name}\nu1,i1,1700000000,4,v1\n")
    summary, store = ingest(path)
    assert (summary["rows_accepted"], summary["rows_quarantined"]) == (1, 0)
    assert stored(store)[name].to_list() == ["v1"]


def test_a_mapped_canonical_name_left_in_the_file_is_an_unusable_header(tmp_path):
    from mdt4rec_core.config import DatasetConfig
    from tasks.ingest import run_ingest

    path = _write(tmp_path / "log.csv", "user_id,item_id,time,feedback,timestamp\nu1,i1,1700000000,4,x\n")
    dataset = DatasetConfig(name="log", format="csv", path=str(path), columns={"timestamp": "time"})
    with pytest.raises(InputError, match=r"log\.csv: unusable header: column 'timestamp' would clash"):
        run_ingest(RunConfig(dataset="log", store=str(tmp_path / "store")), dataset)


def test_an_unusable_only_file_from_the_cli_is_one_error_line(tmp_path):
    path = _write(tmp_path / "logs" / "dup.csv", "user_id,item_id,timestamp,feedback,feedback\nu1,i1,1700000000,4,5\n")
    result = _cli_ingest(tmp_path, path.parent)
    assert result.returncode == 2 and result.stdout == ""
    assert _error_lines(result) == [f"error: {path}: unusable header: column 'feedback' appears 2 times"]
    assert "Traceback" not in result.stderr


def test_an_ndjson_key_with_the_internal_prefix_quarantines_its_file(ingest, tmp_path):
    _write(tmp_path / "a.ndjson", '{"user_id": "u1", "item_id": "i1", "timestamp": 1700000000, "feedback": 1}\n')
    bad = _write(
        tmp_path / "b.ndjson",
        '{"user_id": "u2", "item_id": "i1", "timestamp": 1700000000, "feedback": 1, "_mdt4rec_raw": 0}\n',
    )
    summary, store = ingest(tmp_path, format="ndjson")
    assert summary["file_errors"][str(bad)].startswith("unusable header: column '_mdt4rec_raw' starts with")
    assert (summary["rows_accepted"], summary["rows_quarantined"]) == (1, 1)
    _accounted(summary, store)


def test_control_characters_escaped_in_json_ids_are_quarantined(ingest, tmp_path):
    path = _write(
        tmp_path / "log.ndjson", '{"user_id": "u\\u001f1", "item_id": "i1", "timestamp": 1700000000, "feedback": 1}\n'
    )
    summary, store = ingest(path, format="ndjson")
    assert _reasons(store, path) == [(1, "user_id", "control character 0x1F in the value")]


def _parquet(path, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


GOOD_PARQUET = {
    "user_id": ["u1", "u2"],
    "item_id": ["i1", "i2"],
    "timestamp": [1_700_000_000] * 2,
    "feedback": [1.0, 2.0],
}


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"tags": [["a", "b"], []]}, "column 'tags' is nested (List(String)): flatten it into plain columns"),
        ({"meta": [{"a": 1}, {"a": 2}]}, "column 'meta' is nested (Struct({'a': Int64})): flatten it"),
        ({"blob": [b"\xff\x00", b"x"]}, "column 'blob' has type Binary, which ingest does not read"),
        ({"blobs": [[b"\xff"], []]}, "column 'blobs' is nested (List(Binary))"),
        ({"_mdt4rec_row": [1, 2]}, "unusable header: column '_mdt4rec_row' starts with"),
    ],
)
def test_an_unusable_parquet_file_is_quarantined_and_the_batch_goes_on(ingest, tmp_path, extra, reason):
    _parquet(tmp_path / "a.parquet", GOOD_PARQUET)
    bad = _parquet(tmp_path / "b.parquet", {**GOOD_PARQUET, **extra})
    summary, store = ingest(tmp_path, format="parquet")
    assert summary["file_errors"][str(bad)].startswith(reason)
    assert [(row, field) for row, field, _ in _reasons(store, bad)] == [(1, "file"), (2, "file")]
    assert summary["rows_accepted"] == 2
    _accounted(summary, store)


def test_repeated_parquet_column_names_quarantine_the_file(ingest, tmp_path):
    _parquet(tmp_path / "a.parquet", GOOD_PARQUET)
    table = pa.Table.from_arrays(
        [pa.array(v) for v in GOOD_PARQUET.values()] + [pa.array([3.0, 4.0])], names=[*GOOD_PARQUET, "feedback"]
    )
    bad = tmp_path / "b.parquet"
    pq.write_table(table, bad)
    summary, store = ingest(tmp_path, format="parquet")
    assert summary["file_errors"][str(bad)] == "unusable header: column 'feedback' appears 2 times"
    assert json.loads(quarantined(store).filter(pl.col("file") == str(bad))["raw"][0])["feedback#2"] == 3.0
    _accounted(summary, store)


def test_parquet_dates_booleans_and_categories_are_values(ingest, tmp_path):
    frame = pl.DataFrame(
        {
            "user_id": pl.Series(["u1", "u2"], dtype=pl.Categorical),
            "item_id": ["i1", "i2"],
            "timestamp": [dt.date(2024, 1, 1), dt.date(2024, 1, 2)],
            "feedback": [True, False],
        }
    )
    frame.write_parquet(tmp_path / "log.parquet")
    summary, store = ingest(tmp_path / "log.parquet", format="parquet")
    events = stored(store).sort("user_id")
    assert events["feedback"].to_list() == [1.0, 0.0]
    assert events["timestamp"].to_list() == [dt.datetime(2024, 1, d, tzinfo=dt.UTC) for d in (1, 2)]


def test_a_corrupt_parquet_file_is_reported_and_the_batch_goes_on(ingest, tmp_path):
    _parquet(tmp_path / "a.parquet", GOOD_PARQUET)
    good = (tmp_path / "a.parquet").read_bytes()
    bad = _write(tmp_path / "b.parquet", good[: len(good) // 2])
    summary, store = ingest(tmp_path, format="parquet")
    assert summary["file_errors"][str(bad)].startswith("not a readable Parquet file (")
    assert (summary["rows_accepted"], summary["files_ingested"]) == (2, 2)


# -- identical files, feedback bounds, files changed in place -------------------------------------------------------


@pytest.mark.parametrize("batch_megabytes", [128, 1e-6])
def test_identical_files_keep_one_manifest_entry_and_one_quarantine_record_each(tmp_path, batch_megabytes):
    content = HEADER + GOOD + "u3,i3,never,1\n"
    first, second = _write(tmp_path / "logs" / "a.csv", content), _write(tmp_path / "logs" / "b.csv", content)
    summary, store = _ingest(tmp_path, tmp_path / "logs", batch_megabytes=batch_megabytes)
    assert (summary["files_ingested"], summary["rows_read"], summary["rows_accepted"]) == (2, 8, 3)
    entries = {e.source: e for e in store.manifest("log").values()}
    assert set(entries) == {str(first), str(second)}
    assert (entries[str(first)].rows_accepted, entries[str(first)].rows_quarantined) == (3, 1)
    assert (entries[str(second)].rows_accepted, entries[str(second)].rows_quarantined) == (0, 4)
    assert _reasons(store, first) == [(5, "timestamp", "unparsable timestamp 'never'")]
    repeat = "already stored" if batch_megabytes < 1 else f"of row {{}} in {first}"  # a batch per file, or one
    assert [reason for _, _, reason in _reasons(store, second)] == [
        f"duplicate event (user_id, item_id, timestamp) {repeat.format(row)}" for row in (2, 3, 4)
    ] + ["unparsable timestamp 'never'"]
    _accounted(summary, store)
    again, store = _ingest(tmp_path, tmp_path / "logs", batch_megabytes=batch_megabytes)
    assert (again["files_ingested"], again["files_skipped"]) == (0, 2)


def test_feedback_above_the_bound_is_quarantined(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", HEADER + GOOD + "u3,i3,1700000000,1e300\n")
    summary, store = ingest(path)
    assert _reasons(store, path) == [(5, "feedback", "above feedback_max 1e+06: '1e300'")]
    assert stored(store)["feedback"].max() == 5.0
    _accounted(summary, store)


def test_feedback_bound_of_an_ad_hoc_dataset(tmp_path):
    path = _write(tmp_path / "log.csv", HEADER + GOOD + "u3,i3,1700000000,5.5\n")
    summary, store = _ingest(tmp_path, path, feedback_max=5)
    assert _reasons(store, path) == [(5, "feedback", "above feedback_max 5: '5.5'")]
    assert summary["rows_accepted"] == 3


def test_a_file_changed_under_the_same_name_is_a_new_file(ingest, tmp_path):
    path = _write(tmp_path / "log.csv", HEADER + GOOD)
    ingest(path)
    _write(path, HEADER + "u1,i1,1700000000,1\nu1,i2,1700000100,3\n" + "u3,i3,1700000300,2\nu3,i4,1700000400,2\n")
    summary, store = ingest(path)
    assert (summary["files_ingested"], summary["rows_read"], summary["rows_accepted"]) == (1, 4, 2)
    assert [(row, reason) for row, _, reason in _reasons(store, path)] == [
        (2, "duplicate event (user_id, item_id, timestamp) already stored"),
        (3, "duplicate event (user_id, item_id, timestamp) already stored"),
    ]
    events = stored(store)
    assert events.height == 5  # the row that left the file stays stored
    assert events.filter(pl.col("item_id") == "i1", pl.col("user_id") == "u1")["feedback"].to_list() == [4.0]
    assert len(store.manifest("log")) == 2


# -- property: random mixes of good and bad files in one batch -------------------------------------------------------

BAD_ROWS = ["u1,i1,never,1", "u1,i1,1600000000,-3", "u1,,1600000000,1", "u1,i1", "u\x1f1,i1,1600000000,1", "u1,i1,-1,1"]
BAD_FILES = {
    "empty": "",
    "duplicate header": "user_id,item_id,timestamp,feedback,feedback\nu1,i1,1600000000,1,1\n",
    "reserved column": "user_id,item_id,timestamp,feedback,source_file\nu1,i1,1600000000,1,x\n",
    "missing column": "user_id,item_id,feedback\nu1,i1,1\nu2,i2,2\n",
    "binary": bytes(range(256)),
}
FILES = st.one_of(
    st.tuples(
        st.just("good"), st.lists(st.one_of(st.just(None), st.sampled_from(BAD_ROWS)), max_size=8), st.booleans()
    ),
    st.tuples(st.sampled_from(sorted(BAD_FILES)), st.just([]), st.just(False)),
    st.tuples(st.just("copy"), st.just([]), st.just(False)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(FILES, min_size=1, max_size=6), batch_bytes=st.sampled_from([1, 2**20]))
def test_every_good_row_of_every_readable_file_is_stored_exactly_once(tmp_path_factory, files, batch_bytes):
    folder = tmp_path_factory.mktemp("mix")
    good_keys: set[tuple[str, str, str]] = set()
    written: list[bytes] = []
    for index, (kind, rows, cr_only) in enumerate(files):
        if kind == "copy":
            content = written[0] if written else b""
        elif kind == "good":
            lines = [row or f"u{index},i{k},{1_600_000_000 + k},{k % 5}" for k, row in enumerate(rows)]
            good_keys |= {(f"u{index}", f"i{k}", str(1_600_000_000 + k)) for k, row in enumerate(rows) if row is None}
            text = HEADER + "".join(f"{line}\n" for line in lines)
            content = (text.replace("\n", "\r") if cr_only else text).encode()
        else:
            content = BAD_FILES[kind] if isinstance(BAD_FILES[kind], bytes) else BAD_FILES[kind].encode()
        written.append(content)
        _write(folder / "logs" / f"f{index}.csv", content)
    dataset = resolve_dataset("mix", str(folder / "logs"), "csv")
    store = Store(folder / "store")
    with store.writer_lock("mix"):
        plan = plan_ingest(dataset, store, batch_bytes)
        reports = [commit(read_batch(dataset, batch, store), store) for batch in plan.batches]
    report = IngestReport.combine("mix", reports, files_skipped=len(plan.skipped))
    events = stored(store, "mix")
    stamp = pl.col("timestamp").dt.epoch("s").cast(pl.String)
    keys = list(events.select("user_id", "item_id", stamp).iter_rows()) if events.width else []
    assert len(keys) == len(good_keys) and set(keys) == good_keys
    assert report.rows_read == report.rows_accepted + report.rows_quarantined
    assert report.files_ingested == len(files)
    entries = list(store.manifest("mix").values())
    rejected = quarantined(store, "mix") if report.rows_quarantined else pl.DataFrame(schema={"file": pl.String})
    assert len(entries) == len(files)
    assert sum(e.rows_read for e in entries) == report.rows_read
    assert sum(e.rows_accepted for e in entries) == report.rows_accepted == events.height
    assert sum(e.rows_quarantined for e in entries) == report.rows_quarantined == rejected.height
    for entry in entries:
        assert entry.rows_read == entry.rows_accepted + entry.rows_quarantined
        assert rejected.filter(pl.col("file") == entry.source).height == entry.rows_quarantined
