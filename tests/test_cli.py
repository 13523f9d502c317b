"""The command-line contract: the last line of --json output, exit codes, and the installed MovieLens-1M."""

import json
import subprocess
import sys

import polars as pl

from mdt4rec_core.data.store import Store

CONTRACT_KEYS = {
    "rows_read",
    "rows_accepted",
    "rows_quarantined",
    "files_ingested",
    "files_skipped",
    "users",
    "items",
    "episodes",
    "steps",
    "seconds",
}


def mdt4rec(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mdt4rec_cli", *args], capture_output=True, text=True, timeout=timeout)


def last_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_generic_csv_contract(tmp_path):
    log = tmp_path / "events.csv"
    log.write_text(
        "user_id,item_id,timestamp,feedback\nu1,i1,2024-03-01T10:00:00Z,1\nu1,i2,1709287260,0\n"
        "u2,i1,2024-03-01T10:05:00+01:00,1\nu2,i3,soon,1\n"
    )
    summary = last_json(
        mdt4rec(
            "ingest",
            "--source",
            str(log),
            "--format",
            "csv",
            "--dataset",
            "shop",
            "--store",
            str(tmp_path / "store"),
            "--json",
        )
    )
    assert CONTRACT_KEYS <= summary.keys()
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_quarantined"]) == (4, 3, 1)
    assert (summary["files_ingested"], summary["files_skipped"], summary["users"], summary["items"]) == (1, 0, 2, 2)
    again = last_json(
        mdt4rec(
            "ingest",
            "--source",
            str(log),
            "--format",
            "csv",
            "--dataset",
            "shop",
            "--store",
            str(tmp_path / "store"),
            "--json",
        )
    )
    assert (again["files_ingested"], again["files_skipped"], again["rows_read"]) == (0, 1, 0)


def test_unknown_format_and_dataset_are_one_line_errors(tmp_path):
    result = mdt4rec(
        "ingest", "--source", str(tmp_path), "--format", "xlsx", "--dataset", "x", "--store", str(tmp_path)
    )
    assert result.returncode == 2 and "error: unknown format 'xlsx'" in result.stderr
    result = mdt4rec("ingest", "--dataset", "nope", "--store", str(tmp_path))
    assert result.returncode == 2 and "error: unknown dataset 'nope'" in result.stderr
    result = mdt4rec("ingest", "--dataset", "ml-1m", "--store", str(tmp_path), "--set", "trajectories.state_length=x")
    assert result.returncode == 2 and "trajectories.state_length" in result.stderr


def test_movielens_1m_from_the_installed_package(tmp_path):
    store = tmp_path / "store"
    summary = last_json(mdt4rec("ingest", "--dataset", "ml-1m", "--store", str(store), "--json"))
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_quarantined"]) == (1_000_209, 1_000_209, 0)
    assert (summary["users"], summary["items"], summary["steps"]) == (6040, 3706, 1_000_209)
    assert summary["episodes"] >= 1_000_209 // 30
    items = pl.read_parquet(Store(store).url("items/dataset=ml-1m/items.parquet"))
    assert items.height == 3883 and "Toy Story (1995) | Animation Children's Comedy" in items["text"].to_list()

    validated = last_json(mdt4rec("validate", "--dataset", "ml-1m", "--store", str(store), "--json"))
    assert validated["success"] and [s["suite"] for s in validated["suites"]] == ["interactions", "trajectories"]


def test_validate_exits_1_on_a_corrupted_store(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,feedback\nu1,i1,1700000000,1\nu1,i2,1700000060,2\n")
    store = tmp_path / "store"
    last_json(
        mdt4rec("ingest", "--source", str(log), "--format", "csv", "--dataset", "d", "--store", str(store), "--json")
    )
    # Something outside the pipeline copies a part: every event is now stored twice.
    part = next((store / "interactions").rglob("*.parquet"))
    part.with_name(part.stem + "-copy.parquet").write_bytes(part.read_bytes())
    result = mdt4rec("validate", "--dataset", "d", "--store", str(store), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout.strip().splitlines()[-1])
    failed = report["suites"][0]["failed"]
    assert [f["expectation"] for f in failed] == ["expect_compound_columns_to_be_unique"]
