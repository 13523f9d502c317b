"""Cost per decision of the maximum in-support return search in the simulator loop, side by side in one run.

E episodes advance together for T steps (T > K, so the window fills and starts retire), as the simulator plays
them; at each step every live episode gets one decision. Methods, on the same episodes and the same weights (as
initialised: speed does not depend on training):

- plain DT: no search, one pass over the full window on the running return-to-go (re-encodes its window each step);
- cached search (``IncrementalSearch``, what the simulator's checkpoint policy runs): pass 1's keys and values kept
  from step to step, pass 2 for the chosen candidate;
- re-encoding search (``search``): every candidate re-encoded at every step, packed into one batch;
- the one-at-a-time loop (``search_one_at_a_time``, batch size 1 per window, as EDT's reference implementation): its
  cost per decision does not depend on how many episodes there are, so it runs the first ``--loop-episodes`` only.

With ``--checkpoint`` (a trained model) and ``--store`` (where its dataset's simulator is built), the same methods
also play the simulator's episodes (``--modes``, ``--sim-episodes`` each, evaluation seed 0) through the checkpoint
policy: there a decision's cost follows the episodes as they unfold (lengths, chosen history lengths w*). The cached
and re-encoding searches must play the same episodes; the script checks it.

    python benchmarks/inference.py [--preset cpu] [--episodes 256] [--steps 30] [--set model.backbone.num_layers=4]
        [--checkpoint DIR --store DIR [--dataset ml-1m] [--protocol paper] [--modes FB,NX_10]]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_episodes(episodes: int, steps: int, items: int, state_length: int, max_return: float, seed: int = 0):
    """``episodes`` random full-length EpisodeContexts of ``steps`` steps (prefixes of them are the histories)."""
    import numpy as np

    from mdt4rec_core.inference.search import EpisodeContext

    rng = np.random.default_rng(seed)
    return [
        EpisodeContext(
            state_items=rng.integers(0, items, (steps, state_length)),
            state_feedback=rng.random((steps, state_length)).astype(np.float32),
            state_mask=np.ones((steps, state_length), dtype=bool),
            returns_to_go=np.linspace(max_return, 1, steps).astype(np.float32),
            actions=rng.integers(0, items, steps - 1),
        )
        for _ in range(episodes)
    ]


def play(decide, episodes, steps: int) -> float:
    """Seconds to decide for every episode at every step; ``decide(contexts, numbers)``."""
    import numpy as np

    numbers = np.arange(len(episodes))
    started = time.perf_counter()
    for step in range(steps):
        decide([context.at(step) for context in episodes], numbers)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--loop-episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="steps per episode (the simulator's longest is 30)")
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint folder: also play its simulator")
    parser.add_argument("--store", help="the store its simulator is built in (with --checkpoint)")
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--protocol", default="paper")
    parser.add_argument("--modes", default="FB,NX_10")
    parser.add_argument("--sim-episodes", type=int, default=1000)
    args = parser.parse_args()
    if args.checkpoint is not None and args.store is None:
        parser.error("--checkpoint needs --store")

    import torch

    from mdt4rec_core.config import DataShape, load_run_config
    from mdt4rec_core.inference.incremental import IncrementalSearch
    from mdt4rec_core.inference.search import search, search_one_at_a_time
    from mdt4rec_core.model.network import MDT4Rec

    torch.manual_seed(0)
    run = load_run_config(preset=args.preset, overrides=args.overrides)
    shape = DataShape(
        items=args.items, state_length=run.trajectories.state_length, max_timestep=args.steps, max_return=30.0
    )
    model = MDT4Rec(run.model, shape).eval()
    config = run.search.model_copy(update={"top_k": 1})
    episodes = synthetic_episodes(args.episodes, args.steps, args.items, shape.state_length, shape.max_return)
    cached = IncrementalSearch(model, config)
    methods = {
        "plain DT (no search)": lambda c, n: search(model, c, config.model_copy(update={"search": False})),
        "cached search": lambda c, n: cached.decide(c, n),
        "re-encoding search": lambda c, n: search(model, c, config),
    }
    play(lambda c, n: [m(c[:4], n[:4]) for m in methods.values()], episodes, 3)  # warm-up
    per_decision = {}
    for name, method in methods.items():
        cached.reset()
        per_decision[name] = play(method, episodes, args.steps) / (args.episodes * args.steps)
    loop = episodes[: args.loop_episodes]
    per_decision["one-at-a-time loop"] = play(lambda c, n: search_one_at_a_time(model, c, config), loop, args.steps) / (
        len(loop) * args.steps
    )

    backbone = run.model.backbone
    print(
        f"synthetic episodes: preset {args.preset} ({backbone.kind}), K {run.model.context_steps}, delta "
        f"{config.delta}, {args.episodes} episodes x {args.steps} steps (loop: {len(loop)}), "
        f"{torch.get_num_threads()} threads"
    )
    results = {"synthetic": report(per_decision)}
    if args.checkpoint is not None:
        for mode in args.modes.split(","):
            per_decision = simulator_costs(args, mode)
            print(f"simulator {args.dataset} {args.protocol} {mode}: {args.checkpoint}, {args.sim_episodes} episodes")
            results[f"simulator {mode}"] = report(per_decision)
    print(json.dumps({"preset": args.preset, "episodes": args.episodes, "steps": args.steps, **results}))


def report(per_decision: dict[str, float]) -> dict:
    """Print and return the costs per decision and the ratios of the cached search to the others."""
    for name, seconds in per_decision.items():
        print(f"  {name:<22} {seconds * 1e3:9.3f} ms per decision  {1 / seconds:9.1f} decisions/s")
    ratios = {
        "cached_vs_plain": per_decision["cached search"] / per_decision["plain DT (no search)"],
        "loop_vs_cached": per_decision["one-at-a-time loop"] / per_decision["cached search"],
        "reencoding_vs_cached": per_decision["re-encoding search"] / per_decision["cached search"],
    }
    print(
        f"  cached search: {ratios['cached_vs_plain']:.2f}x plain DT, {ratios['loop_vs_cached']:.1f}x faster than "
        f"the loop, {ratios['reencoding_vs_cached']:.1f}x faster than re-encoding"
    )
    return {"seconds_per_decision": per_decision, **ratios}


def simulator_costs(args, mode: str) -> dict[str, float]:
    """Seconds per decision of each method playing ``args.sim_episodes`` episodes of ``mode`` (the loop: as many
    as ``--loop-episodes``)."""
    import numpy as np

    from mdt4rec_core.config import load_dataset_config
    from mdt4rec_core.data.store import Store
    from mdt4rec_core.envs.build import build_or_load
    from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy
    from mdt4rec_core.envs.evaluation import run_episodes
    from mdt4rec_core.inference.search import search_one_at_a_time

    class LoopPolicy(CheckpointPolicy):
        def decide(self, contexts, episodes, seed):
            return search_one_at_a_time(self.model, contexts, self.config, seed=seed)

    environment, _ = build_or_load(Store(args.store), load_dataset_config(args.dataset), args.protocol)
    searched = CheckpointPolicy(args.checkpoint, environment.catalogue).config
    variants = {
        "plain DT (no search)": (CheckpointPolicy, searched.model_copy(update={"search": False}), args.sim_episodes),
        "cached search": (CheckpointPolicy, searched, args.sim_episodes),
        "re-encoding search": (CheckpointPolicy, searched.model_copy(update={"reuse_megabytes": 0}), args.sim_episodes),
        "one-at-a-time loop": (LoopPolicy, searched, args.loop_episodes),
    }
    per_decision, returns = {}, {}
    for name, (kind, config, episodes) in variants.items():
        policy = kind(args.checkpoint, environment.catalogue, config)
        started = time.perf_counter()
        log = run_episodes(
            environment.rewards, environment.quit_rule, mode, policy, environment.start_users, episodes, 0
        )
        per_decision[name] = (time.perf_counter() - started) / int(log.lengths.sum())
        returns[name] = log.returns
    if not np.array_equal(returns["cached search"], returns["re-encoding search"]):
        raise SystemExit("the cached and the re-encoding search played different episodes")
    return per_decision


if __name__ == "__main__":
    main()
