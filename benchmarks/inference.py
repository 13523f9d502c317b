"""Stitched decisions per second, cpu preset (SmolLM2, first 4 blocks, LoRA), 256 users, K 20, delta 2.

Side by side in one run, on the same contexts: the batched search (all candidates of all users packed into one batch
per pass, run in slices of at most 4,096 tokens; and the same batch as one call), the one-candidate-at-a-time loop
(batch size 1, as EDT's reference implementation), and plain DT without search (one pass over the full history, the
same code path with one candidate per user). Weights are as initialised: speed does not depend on training.

    python benchmarks/inference.py [--users 256] [--steps 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--steps", type=int, default=24, help="episode steps so far per user (>= K: all candidates)")
    parser.add_argument("--items", type=int, default=3706)
    args = parser.parse_args()

    import numpy as np
    import torch

    from mdt4rec_core.config import DataShape, SearchConfig, load_run_config
    from mdt4rec_core.inference.search import EpisodeContext, search, search_one_at_a_time
    from mdt4rec_core.model.network import MDT4Rec

    torch.manual_seed(0)
    run = load_run_config(preset="cpu")
    shape = DataShape(items=args.items, state_length=run.trajectories.state_length, max_timestep=30, max_return=30.0)
    model = MDT4Rec(run.model, shape).eval()
    rng = np.random.default_rng(0)
    n, t = shape.state_length, args.steps
    contexts = [
        EpisodeContext(
            state_items=rng.integers(0, args.items, (t + 1, n)),
            state_feedback=rng.random((t + 1, n)).astype(np.float32),
            state_mask=np.ones((t + 1, n), dtype=bool),
            returns_to_go=np.linspace(shape.max_return, 1, t + 1).astype(np.float32),
            actions=rng.integers(0, args.items, t),
        )
        for _ in range(args.users)
    ]
    search_config = SearchConfig(delta=2)
    one_call = SearchConfig(delta=2, max_batch_tokens=None)
    timings = {}
    for name, run in (
        ("plain DT (no search)", lambda: search(model, contexts, SearchConfig(search=False))),
        ("batched search", lambda: search(model, contexts, search_config)),
        ("batched, one call", lambda: search(model, contexts, one_call)),
        ("one-at-a-time loop", lambda: search_one_at_a_time(model, contexts, search_config)),
    ):
        run() if name != "one-at-a-time loop" else None  # warm-up
        started = time.perf_counter()
        decisions = run()
        timings[name] = time.perf_counter() - started
    candidates = len(decisions[0].lengths)
    print(
        f"{args.users} users, {candidates} candidates each (K {run.model.context_steps}, delta 2), "
        f"{torch.get_num_threads()} threads"
    )
    for name, seconds in timings.items():
        print(f"  {name:<22} {seconds:8.2f} s  {args.users / seconds:8.1f} decisions/s")
    speedup = timings["one-at-a-time loop"] / timings["batched search"]
    cost = timings["batched search"] / timings["plain DT (no search)"]
    print(f"batched vs loop: {speedup:.1f}x faster; stitched cost: {cost:.1f}x plain DT")
    print(json.dumps({"timings": timings, "speedup_vs_loop": speedup, "cost_vs_plain": cost, "candidates": candidates}))


if __name__ == "__main__":
    main()
