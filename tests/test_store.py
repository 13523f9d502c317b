"""Store guarantees: atomic writes, idempotent re-ingestion, recovery after a writer is killed."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl

from mdt4rec_core.data.schema import EVENT_KEY
from mdt4rec_core.data.sources import file_sha256
from mdt4rec_core.data.store import Store
from tests.conftest import stored


def _synthetic_log(path, rows, seed):
    rng = np.random.default_rng(seed)
    pl.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, 5000, rows)],
            "item_id": [f"i{k}" for k in rng.integers(0, 3000, rows)],
            "timestamp": rng.integers(1_600_000_000, 1_700_000_000, rows),
            "feedback": rng.integers(1, 6, rows).astype(float),
        }
    ).write_csv(path)


def _tree(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def test_leftovers_of_a_killed_writer_are_cleared(ingest, tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,feedback\nu1,i1,1,1\nu1,i2,2,2\n")
    store = Store(tmp_path / "store")
    # What a writer killed after its part and before its manifest entry leaves behind, plus a half-written temp file.
    orphan = store.interaction_part("log", "2020-01-01", file_sha256(log))
    store.write_parquet(pl.DataFrame({"user_id": ["u1"]}), orphan)
    half = store.path("interactions/dataset=log/ingest_date=2020-01-01/part-x.parquet.1234.tmp")
    with open(half, "wb") as handle:
        handle.write(b"PAR1 half")
    summary, store = ingest(log)
    assert not store.exists(orphan)
    assert not [p for p in _tree(store.root) if p.endswith(".tmp")]
    assert stored(store).height == summary["rows_accepted"] == 2


def test_kill_9_during_a_write_then_rerun(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for day in range(3):
        _synthetic_log(logs / f"day{day}.csv", 400_000, seed=day)
    store_root = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "mdt4rec_cli",
        "ingest",
        "--source",
        str(logs),
        "--format",
        "csv",
        "--dataset",
        "big",
        "--store",
        str(store_root),
    ]
    writer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    interactions = store_root / "interactions"
    deadline = time.monotonic() + 120
    while not interactions.exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    recorded_at_kill = len(list((store_root / "manifest").rglob("*.json"))) if (store_root / "manifest").exists() else 0
    assert recorded_at_kill < 3  # killed before the last file was committed

    rerun = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    store = Store(store_root)
    assert not [p for p in _tree(store_root) if p.endswith(".tmp")]
    events = stored(store, "big")
    manifest = store.manifest("big")
    assert len(manifest) == 3
    assert events.height == sum(e.rows_accepted for e in manifest.values())
    assert events.select(EVENT_KEY).is_duplicated().sum() == 0
    expected = pl.concat([pl.read_csv(logs / f"day{d}.csv") for d in range(3)]).unique(EVENT_KEY).height
    assert events.height == expected
