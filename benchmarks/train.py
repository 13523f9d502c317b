"""Training throughput on MovieLens-1M trajectories: windows/s and tokens/s (3 tokens per step, K steps per window)
for the tiny and cpu presets, each over a fixed number of steps after a short warm-up run.

    python benchmarks/train.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    from mdt4rec_core.config import RunConfig, load_run_config, resolve_dataset
    from mdt4rec_core.train import train_on_store
    from tasks.ingest import run_ingest

    work = Path(tempfile.mkdtemp(prefix="mdt4rec-train-bench-"))
    results = {}
    try:
        store = str(work / "store")
        run_ingest(RunConfig(dataset="ml-1m", store=store), resolve_dataset("ml-1m"))
        for name in ("tiny", "cpu"):
            run = load_run_config(
                dataset="ml-1m",
                preset=name,
                store=store,
                overrides=[
                    f"train.max_steps={args.steps}",
                    f"train.validate_every={args.steps}",
                    "train.validation_batches=1",
                    f"train.checkpoint_every={args.steps}",
                ],
            )
            summary = train_on_store(run, work / name)
            summary.pop("history")
            results[name] = summary
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, r in results.items():
        print(
            f"{name:<5} batch {load_run_config(preset=name).train.batch_size:>3}: "
            f"{r['windows_per_second']:8.1f} windows/s "
            f"{r['tokens_per_second']:10.0f} tokens/s  ({r['trainable_params']:,} of {r['total_params']:,} "
            f"parameters trainable; loss {r['train_loss_first']:.3f} -> {r['train_loss_last']:.3f})"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
