"""Every supported raw format, read from fixture files written in the exact layout of the real datasets."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from tests.conftest import FIXTURES, quarantined, stored


def _lines(path):
    return [line for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]


def test_coat_dense_matrices(ingest):
    summary, store = ingest(FIXTURES / "coat", format=None, dataset="coat")
    train = np.loadtxt(FIXTURES / "coat" / "train.ascii")
    test = np.loadtxt(FIXTURES / "coat" / "test.ascii")
    assert summary["rows_read"] == summary["rows_accepted"] == int((train > 0).sum() + (test > 0).sum())
    events = stored(store, "coat")
    row = events.filter(pl.col("source_file").str.ends_with("train.ascii")).sort("source_row").row(0, named=True)
    first_user, first_item = np.argwhere(train > 0)[0]
    assert (row["user_id"], row["item_id"]) == (str(first_user), str(first_item))
    assert row["feedback"] == train[first_user, first_item]
    # No time in the source: train events come before test events.
    by_file = events.group_by("source_file").agg(pl.col("timestamp").min(), pl.col("timestamp").max().alias("last"))
    train_last = by_file.filter(pl.col("source_file").str.ends_with("train.ascii"))["last"][0]
    test_first = by_file.filter(pl.col("source_file").str.ends_with("test.ascii"))["timestamp"][0]
    assert train_last < test_first


def test_yahoo_r3_train_and_test(ingest):
    summary, store = ingest(FIXTURES / "yahoo-r3", format=None, dataset="yahoo-r3")
    folder = FIXTURES / "yahoo-r3"
    expected = sum(len(_lines(p)) for p in folder.glob("*.txt"))
    assert summary["rows_accepted"] == expected and summary["rows_quarantined"] == 0
    first = _lines(folder / "ydata-ymusic-rating-study-v1_0-train.txt")[0].split()
    row = stored(store, "yahoo-r3").sort("timestamp").row(0, named=True)
    assert [row["user_id"], row["item_id"], row["feedback"]] == [first[0], first[1], float(first[2])]


def test_kuairec_big_and_small_matrix_with_categories(ingest):
    summary, store = ingest(FIXTURES / "kuairec", format=None, dataset="kuairec")
    expected = sum(len(_lines(FIXTURES / "kuairec" / f)) - 1 for f in ("big_matrix.csv", "small_matrix.csv"))
    assert summary["rows_accepted"] == expected
    events = stored(store, "kuairec").sort("source_row")
    header, first = [line.split(",") for line in _lines(FIXTURES / "kuairec" / "big_matrix.csv")[:2]]
    record = dict(zip(header, first, strict=True))
    row = events.filter(pl.col("source_file").str.ends_with("big_matrix.csv")).row(0, named=True)
    assert row["item_id"] == record["video_id"]
    assert row["feedback"] == pytest.approx(float(record["watch_ratio"]))
    assert row["timestamp"] == dt.datetime.fromtimestamp(float(record["timestamp"]), dt.UTC)
    assert row["play_duration"] == record["play_duration"]  # extra columns kept as they are
    items = pl.read_parquet(store.url("items/dataset=kuairec/items.parquet"))
    assert items.height == len(_lines(FIXTURES / "kuairec" / "item_categories.csv")) - 1
    assert items.filter(pl.col("item_id") == "1")["text"][0].startswith("[")  # quoted list with commas kept whole


def test_kuairand_pure_millisecond_time_and_tags(ingest):
    summary, store = ingest(FIXTURES / "kuairand-pure", format=None, dataset="kuairand-pure")
    log = FIXTURES / "kuairand-pure" / "log_standard_4_08_to_4_21_pure.csv"
    assert summary["rows_accepted"] == len(_lines(log)) - 1
    header, first = [line.split(",") for line in _lines(log)[:2]]
    record = dict(zip(header, first, strict=True))
    row = stored(store, "kuairand-pure").sort("source_row").row(0, named=True)
    assert row["timestamp"] == dt.datetime.fromtimestamp(int(record["time_ms"]) / 1000, dt.UTC)
    assert row["feedback"] == float(record["is_click"])
    items = pl.read_parquet(store.url("items/dataset=kuairand-pure/items.parquet"))
    assert items.height == 15 and "," in " ".join(items["text"].to_list())


def test_grouplens_ratings_dat_and_latin1_movies(ingest):
    summary, store = ingest(FIXTURES / "ml-1m-grouplens", format=None, dataset="ml-1m-grouplens")
    assert summary["rows_accepted"] == len(_lines(FIXTURES / "ml-1m-grouplens" / "ratings.dat"))
    user, item, rating, stamp = _lines(FIXTURES / "ml-1m-grouplens" / "ratings.dat")[0].split("::")
    row = stored(store, "ml-1m-grouplens").sort("source_row").row(0, named=True)
    assert (row["user_id"], row["item_id"], row["feedback"]) == (user, item, float(rating))
    assert row["timestamp"] == dt.datetime.fromtimestamp(int(stamp), dt.UTC)
    items = pl.read_parquet(store.url("items/dataset=ml-1m-grouplens/items.parquet"))
    assert "Cité des enfants perdus, La (1995) | Adventure|Children's|Fantasy" in items["text"].to_list()
    users = pl.read_parquet(store.url("users/dataset=ml-1m-grouplens/users.parquet"))
    assert users.height == 4 and set(users.columns) >= {"user_id", "gender", "age", "zip_code"}


def test_grouplens_u_data(ingest):
    summary, store = ingest(FIXTURES / "ml-100k-grouplens", format=None, dataset="ml-100k-grouplens")
    assert summary["rows_accepted"] == len(_lines(FIXTURES / "ml-100k-grouplens" / "u.data"))
    items = pl.read_parquet(store.url("items/dataset=ml-100k-grouplens/items.parquet"))
    assert items.height == 10 and items.filter(pl.col("item_id") == "1")["text"][0] == "Toy Story (1995)"


def test_ndjson_and_parquet_event_logs(ingest, tmp_path):
    log = tmp_path / "log.ndjson"
    log.write_text(
        '{"user_id": "u1", "item_id": "i1", "timestamp": "2024-05-01T10:00:00Z", "feedback": 1, "device": "ios"}\n'
        '{"user_id": "u1", "item_id": "i2", "timestamp": 1714557700, "feedback": 0.5}\n'
        '{"user_id": "u2", "item_id": "i1", "timestamp": "2024-05-01 11:00:00", "feedback": 2}\n'
    )
    summary, store = ingest(log, format="ndjson", dataset="events")
    assert summary["rows_accepted"] == 3
    events = stored(store, "events").sort("source_row")
    assert events["timestamp"][0] == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert events["device"].to_list() == ["ios", None, None]

    frame = pl.DataFrame(
        {
            "user_id": ["a", "b"],
            "item_id": ["x", "y"],
            "feedback": [1.0, 3.0],
            "timestamp": [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)],
        }
    )
    frame.write_parquet(tmp_path / "log.parquet")
    summary, store = ingest(tmp_path / "log.parquet", format="parquet", dataset="pq")
    assert summary["rows_accepted"] == 2
    assert stored(store, "pq").sort("user_id")["timestamp"].to_list() == [
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    ]


def test_column_mapping_for_a_generic_csv(ingest, tmp_path, monkeypatch):
    from mdt4rec_core.config import DatasetConfig, RunConfig
    from tasks.ingest import run_ingest

    log = tmp_path / "clicks.csv"
    log.write_text("uid,sku,ts_ms,clicked\nu1,s1,1700000000000,1\nu1,s2,1700000005000,0\n")
    dataset = DatasetConfig(
        name="clicks",
        format="csv",
        path=str(log),
        timestamp_unit="ms",
        columns={"user_id": "uid", "item_id": "sku", "timestamp": "ts_ms", "feedback": "clicked"},
    )
    summary = run_ingest(RunConfig(dataset="clicks", store=str(tmp_path / "s")), dataset)
    assert summary["rows_accepted"] == 2 and summary["rows_quarantined"] == 0


def test_installed_movielens_100k(ingest):
    summary, store = ingest(None, format=None, dataset="ml-100k")
    assert summary["rows_read"] == 100_000 and summary["rows_accepted"] + summary["rows_quarantined"] == 100_000
    assert summary["users"] == 943 and summary["items"] == 1682
    items = pl.read_parquet(store.url("items/dataset=ml-100k/items.parquet"))
    assert items.height == 1682
    assert quarantined(store, "ml-100k").height == summary["rows_quarantined"]
