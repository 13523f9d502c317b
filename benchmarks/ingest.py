"""Ingestion benchmark: MovieLens-1M from the installed package to validated interactions plus trajectories.

Runs, side by side in one invocation and each in its own child process (so that peak RSS is its own):
  polars    the pipeline's ingest chain (tasks.ingest.run_ingest, no Prefect), episodes cut by session as the
            pandas script cuts them (all users, 30-step cap)
  pandas    a straightforward pandas implementation of the same steps, with the same GX suites
  default   the pipeline's ingest chain with the default trajectory settings: episodes cut by the paper
            simulator's quit rule, which builds that simulator (once per store) first
  synthetic the pipeline's ingest chain on a generated log of --synthetic-rows rows (20 daily CSV files)
Two times per run: seconds measured inside the child after its imports, and the whole process as the parent sees
it (interpreter and library start-up included), which is what a user waits for. Peak RSS is the child's maximum
resident set size, start-up included.

    python benchmarks/ingest.py [--synthetic-rows 20000000] [--skip-synthetic]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children -------------------------------------------------------------------------------------------------------
def child_polars(store: str, dataset: str, source: str | None, format: str | None, cut: str) -> dict:
    from mdt4rec_core.config import RunConfig, TrajectoryConfig, resolve_dataset
    from tasks.ingest import run_ingest

    config = RunConfig(dataset=dataset, store=store)
    if cut == "session":
        config = config.model_copy(update={"trajectories": TrajectoryConfig(cut_by="session", protocol="paper")})
    rss_start = peak_rss_mb()
    started = time.perf_counter()
    summary = run_ingest(config, resolve_dataset(dataset, source, format))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_start,
        "rows_accepted": summary["rows_accepted"],
        "steps": summary["steps"],
    }


def child_pandas(store: str) -> dict:
    import datetime as dt

    import numpy as np
    import pandas as pd
    import polars as pl

    from mdt4rec_core.config import TrajectoryConfig, load_dataset_config
    from mdt4rec_core.data.sources import interaction_files
    from tasks.validation import interaction_expectations, run_suite, trajectory_expectations

    config = TrajectoryConfig()
    path = interaction_files(load_dataset_config("ml-1m"))[0]
    out = Path(store)
    rss_start = peak_rss_mb()
    started = time.perf_counter()

    # Read and type, quarantining rows whose fields do not parse.
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    raw.columns = [c.split(":", 1)[0] for c in raw.columns]
    frame = pd.DataFrame(
        {
            "user_id": raw["user_id"].str.strip(),
            "item_id": raw["item_id"].str.strip(),
            "timestamp": pd.to_datetime(pd.to_numeric(raw["timestamp"], errors="coerce"), unit="s", utc=True),
            "feedback": pd.to_numeric(raw["rating"], errors="coerce").astype("float64"),
            "source_file": str(path),
            "source_row": np.arange(2, len(raw) + 2),
        }
    )
    reason = np.select(
        [
            frame["user_id"] == "",
            frame["item_id"] == "",
            frame["timestamp"].isna(),
            frame["feedback"].isna(),
            ~np.isfinite(frame["feedback"]),
            frame["feedback"] < 0,
        ],
        ["missing user_id", "missing item_id", "unparsable timestamp", "feedback not a number", "infinite", "negative"],
        default="",
    )
    bad = reason != ""
    duplicate = frame.duplicated(["user_id", "item_id", "timestamp"]) & ~bad
    quarantined = pd.DataFrame(
        {
            "file": str(path),
            "row": frame["source_row"][bad | duplicate],
            "reason": np.where(duplicate, "duplicate", reason)[bad | duplicate],
        }
    )
    accepted = frame[~bad & ~duplicate]

    # Validate, then store (temporary name, rename) with a manifest entry.
    report = run_suite(
        "interactions",
        pl.from_pandas(accepted[["user_id", "item_id", "timestamp", "feedback"]]),
        interaction_expectations(dt.datetime.now(dt.UTC)),
        out / "reports",
    )
    assert report.success, report.summary()
    part = out / "interactions" / "part.parquet"
    part.parent.mkdir(parents=True, exist_ok=True)
    accepted.sort_values(["user_id", "timestamp", "item_id"]).to_parquet(str(part) + ".tmp")
    os.replace(str(part) + ".tmp", part)
    quarantined.to_parquet(out / "quarantine.parquet")
    (out / "manifest.json").write_text(json.dumps({"rows": len(frame)}))

    # Trajectories.
    events = pd.read_parquet(part, columns=["user_id", "item_id", "timestamp", "feedback"])
    events = events.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    catalogue = np.sort(events["item_id"].unique())
    events["action"] = np.searchsorted(catalogue, events["item_id"]).astype("int32")
    low, high = events["feedback"].min(), events["feedback"].max()
    events["reward"] = ((events["feedback"] - low) / (high - low)).astype("float32")
    events["episode"] = events.groupby("user_id").cumcount() // config.max_episode_steps
    keys = ["user_id", "episode"]
    grouped = events.groupby(keys)
    events["step"] = grouped.cumcount()
    events["return_to_go"] = events.iloc[::-1].groupby(keys)["reward"].cumsum().iloc[::-1]
    events["done"] = events["step"] == grouped["step"].transform("max")
    lag_items = [grouped["action"].shift(k) for k in range(config.state_length, 0, -1)]
    lag_rewards = [grouped["reward"].shift(k) for k in range(config.state_length, 0, -1)]
    items = np.column_stack(lag_items)
    rewards = np.column_stack(lag_rewards)
    events["state_items"] = [row[~np.isnan(row)].astype(np.int32) for row in items]
    events["state_feedback"] = [row[~np.isnan(row)].astype(np.float32) for row in rewards]

    view = events[["user_id", "episode", "step", "action", "reward", "return_to_go", "done"]].copy()
    view["state_length"] = events["state_items"].map(len)
    view["state_item_min"] = events["state_items"].map(lambda s: s.min() if len(s) else -1)
    view["state_item_max"] = events["state_items"].map(lambda s: s.max() if len(s) else -1)
    next_rtg = events.groupby(keys)["return_to_go"].shift(-1).fillna(0.0)
    view["return_to_go_residual"] = events["return_to_go"] - events["reward"] - next_rtg
    gap = events.groupby(keys)["timestamp"].diff().dt.total_seconds().fillna(0.0)
    view["seconds_since_previous_step"] = gap
    view["step_increment"] = events.groupby(keys)["step"].diff().fillna(1).astype("int64")
    view["terminal_steps_in_episode"] = events.groupby(keys)["done"].transform("sum")
    report = run_suite(
        "trajectories", pl.from_pandas(view), trajectory_expectations(config, len(catalogue)), out / "reports"
    )
    assert report.success, report.summary()
    events.drop(columns=["item_id"]).to_parquet(out / "steps.parquet")
    pd.DataFrame({"item_id": catalogue}).to_parquet(out / "catalogue.parquet")
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_start,
        "rows_accepted": len(accepted),
        "steps": len(events),
    }


def write_synthetic(folder: Path, rows: int, files: int = 20, seed: int = 0) -> None:
    """``files`` daily CSV logs with ``rows`` events in all: 200k users, 50k items, ratings 1..5."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = rows // files
    for day in range(files):
        start = 1_700_000_000 + day * 86_400
        pl.DataFrame(
            {
                "user_id": pl.Series(rng.integers(0, 200_000, per_file)).cast(pl.String).str.pad_start(6, "0"),
                "item_id": pl.Series(rng.integers(0, 50_000, per_file)).cast(pl.String),
                "timestamp": np.sort(rng.integers(start, start + 86_400, per_file)),
                "feedback": rng.integers(1, 6, per_file).astype(float),
            }
        ).with_columns(
            pl.format("u{}", "user_id").alias("user_id"), pl.format("i{}", "item_id").alias("item_id")
        ).write_csv(folder / f"events-{day:02d}.csv")


# -- driver ---------------------------------------------------------------------------------------------------------
def run_child(*args: str) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    whole = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{result.stderr[-4000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "whole_process_seconds": whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic-rows", type=int, default=20_000_000)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, store, *rest = args.child
        dataset, source, format = (rest + ["", "", ""])[:3]
        cut = "default" if kind == "default" else "session"
        result = (
            child_pandas(store)
            if kind == "pandas"
            else child_polars(store, dataset, source or None, format or None, cut)
        )
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="mdt4rec-bench-"))
    try:
        results = {
            "polars": run_child("polars", str(work / "polars"), "ml-1m", "", ""),
            "pandas": run_child("pandas", str(work / "pandas")),
            "default": run_child("default", str(work / "default"), "ml-1m", "", ""),
        }
        if not args.skip_synthetic:
            logs = work / "synthetic-logs"
            write_synthetic(logs, args.synthetic_rows)
            results["synthetic"] = run_child("polars", str(work / "synthetic"), "synthetic", str(logs), "csv")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'run':<10} {'rows':>12} {'steps':>12} {'seconds':>9} {'whole s':>9} {'peak RSS MB':>12}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['rows_accepted']:>12,} {r['steps']:>12,} {r['seconds']:>9.2f} "
            f"{r['whole_process_seconds']:>9.2f} {r['peak_rss_mb']:>12.0f}"
        )
    pandas, polars = results["pandas"], results["polars"]
    print(
        f"pandas / polars on MovieLens-1M: {pandas['seconds'] / polars['seconds']:.2f}x after imports, "
        f"{pandas['whole_process_seconds'] / polars['whole_process_seconds']:.2f}x as whole processes"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
