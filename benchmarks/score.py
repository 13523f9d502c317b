"""Batch scoring throughput: users/s of the batched scorer (one stitched search per chunk of 256 users) against the
row-by-row loop (one search per user, as the served model answered before), side by side on the same users'
contexts, cpu preset, at each of --threads torch threads (the load average beside each: on a shared machine
other processes' load changes these figures several times over).

Without --checkpoint the cpu preset trains --steps steps on the store's current trajectory set of --dataset (speed
does not depend on training; ingesting first when the store holds nothing of it) into benchmarks/_work/. The batched
scorer scores --users users (default: all), the loop the first --loop-users of them; both include building each
user's context from their stored events.

    python benchmarks/score.py [--dataset ml-1m] [--store store] [--checkpoint DIR|models:/mdt4rec@champion]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = ROOT / "benchmarks" / "_work"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--store", default=None, help="default: conf/pipeline.yaml's store")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder or a models:/ URI")
    parser.add_argument("--steps", type=int, default=30, help="training steps when no --checkpoint is given")
    parser.add_argument("--users", type=int, default=None, help="users the batched scorer scores (default: all)")
    parser.add_argument("--loop-users", type=int, default=100, help="users the row-by-row loop scores")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure, one after the other")
    args = parser.parse_args()

    import torch

    from mdt4rec_core.config import load_run_config
    from mdt4rec_core.data.store import Store
    from mdt4rec_core.inference.batch import score_histories
    from mdt4rec_core.inference.histories import history_length, logged_histories
    from tasks.scoring import load_model

    steps = args.steps
    training = [f"train.max_steps={steps}", f"train.validate_every={steps}", f"train.checkpoint_every={steps}"]
    run = load_run_config(dataset=args.dataset, preset="cpu", store=args.store, overrides=training)
    checkpoint = args.checkpoint or str(_train(run))
    recommender, label = load_model(checkpoint, run.tracking)
    length = history_length(recommender.model)
    histories = logged_histories(Store(run.store), args.dataset, recommender.catalogue, None, length).frame
    histories = histories.head(args.users) if args.users else histories
    now = dt.datetime.now(dt.UTC)

    def measure(threads: int) -> dict:
        """Both ways at ``threads`` torch threads: users/s, and how many loop users got the batched items."""
        torch.set_num_threads(threads)
        score_histories(recommender, histories.head(64), args.k, label, now)  # warm-up
        started = time.perf_counter()
        batched = score_histories(recommender, histories, args.k, label, now)
        batched_seconds = time.perf_counter() - started
        looped = histories.head(args.loop_users)
        started = time.perf_counter()
        rows = [score_histories(recommender, looped.slice(r, 1), args.k, label, now) for r in range(looped.height)]
        loop_seconds = time.perf_counter() - started
        items = dict(batched.group_by("user_id", maintain_order=True).agg("item_id").iter_rows())
        same = sum(row["item_id"].to_list() == items[row["user_id"][0]] for row in rows)
        batched_rate, loop_rate = histories.height / batched_seconds, looped.height / loop_seconds
        return {
            "threads": threads,
            "batched_seconds": round(batched_seconds, 2),
            "batched_users_per_second": round(batched_rate, 1),
            "loop_users": looped.height,
            "loop_seconds": round(loop_seconds, 2),
            "loop_users_per_second": round(loop_rate, 2),
            "speedup": round(batched_rate / loop_rate, 1),
            "loop_users_with_the_batched_items": same,
            "load_average": round(os.getloadavg()[0], 1),
        }

    runs = [measure(int(threads)) for threads in args.threads.split(",")]
    print(f"{args.dataset}, {label} (cpu preset, histories of up to {length} steps, k {args.k})")
    for r in runs:
        print(
            f"  {r['threads']} threads: batched {histories.height:,} users in {r['batched_seconds']} s = "
            f"{r['batched_users_per_second']} users/s; loop {r['loop_users']} users in {r['loop_seconds']} s = "
            f"{r['loop_users_per_second']} users/s; batched vs loop {r['speedup']}x; "
            f"{r['loop_users_with_the_batched_items']}/{r['loop_users']} same items; load average "
            f"{r['load_average']}"
        )
    print(json.dumps({"dataset": args.dataset, "model": label, "history_length": length, "runs": runs}))


def _train(run) -> Path:
    """A checkpoint of ``run`` (the cpu preset, a few steps) on its dataset's current trajectory set, reused when it
    exists; the dataset is ingested first when the store holds nothing of it."""
    from mdt4rec_core.config import resolve_dataset
    from mdt4rec_core.data.store import Store
    from mdt4rec_core.data.trajectories import current_version
    from mdt4rec_core.train import train_on_store
    from tasks.ingest import run_ingest

    if current_version(Store(run.store), run.dataset) is None:
        run_ingest(run, resolve_dataset(run.dataset))
    out = WORK / f"score-{run.dataset}-cpu-{run.train.max_steps}"
    if not (out / "checkpoint").is_dir():
        train_on_store(run, out)
    return out / "checkpoint"


if __name__ == "__main__":
    main()
