"""Decoding levers measured without retraining: the study's trained checkpoints play the study's episodes again (each
seed its own evaluation seed, so with both levers at 0 the script reproduces the study cells) while

- a rating prior, lambda times each item's shrunk mean logged rating (z-scored over the catalogue; the log rule's
  quality, from the trajectory set's training users), is added to the action logits (``--lambdas``), and
- ``search.reward_weight`` tilts the policy by the model's own predicted rewards (``--reward-weights``; models
  trained with ``model.reward_head``), or
- the model's M best items are re-ranked by quality (``--rerank-top M``, 0: off; ``--rerank-by`` ``prior``: the
  shrunk mean logged rating, ``reward``: the model's predicted rewards), so that the policy's choice of where to go
  stays and quality decides among its candidates.

Not part of the method: RESULTS.md reports what each lever did.

    python experiments/decoding.py --store store --study studies/ml-1m-cpu [--protocol paper] [--arm mdt4rec]
        [--lambdas 0,0.5,1,2] [--reward-weights 0] [--modes FB,NX_10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _values(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--study", type=Path, required=True, help="the study folder, e.g. studies/ml-1m-cpu")
    parser.add_argument("--protocol", default="paper")
    parser.add_argument("--arm", default="mdt4rec")
    parser.add_argument("--lambdas", default="0", help="rating-prior weights")
    parser.add_argument("--reward-weights", default="0", help="search.reward_weight values")
    parser.add_argument("--rerank-top", default="0", help="re-rank the model's M best items by quality (0: off)")
    parser.add_argument("--rerank-by", choices=["prior", "reward"], default="prior")
    parser.add_argument("--modes", default="FB,NX_10")
    args = parser.parse_args()

    import numpy as np
    import torch

    from mdt4rec_core.baselines.log_rule import shrunk_mean_feedback
    from mdt4rec_core.config import load_dataset_config
    from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy
    from mdt4rec_core.envs.evaluation import run_episodes
    from mdt4rec_core.inference import search as search_module
    from mdt4rec_core.model.checkpoint import checkpoint_search
    from mdt4rec_core.model.network import MDT4Rec
    from mdt4rec_core.study import _validation_steps
    from tasks.study import prepare_protocol

    settings = json.loads((args.study / "settings.json").read_text())
    inputs = prepare_protocol(args.store, load_dataset_config(settings.get("dataset", "ml-1m")), args.protocol)
    trajectories, environment = inputs.trajectories, inputs.environment
    training = trajectories.steps.filter(~_validation_steps(trajectories.steps, 0.05))
    quality = shrunk_mean_feedback(training, environment.info.items, 20.0)
    prior = torch.as_tensor((quality - quality.mean()) / quality.std(), dtype=torch.float32)
    weight = [0.0]
    scores = MDT4Rec._action_logits
    MDT4Rec._action_logits = lambda model, hidden, distance: scores(model, hidden, distance) + weight[0] * prior
    top = [0]
    plain_scores = search_module.item_scores

    def reranked(logits, item_rewards, config):
        """The M best items by the plain scores come first, ordered by quality; the rest keep their order after them
        (so forbidden items among the M give way to the next)."""
        base = plain_scores(logits, item_rewards, config)
        if not top[0]:
            return base
        quality = (item_rewards.float().cpu() if args.rerank_by == "reward" else prior.expand_as(base)).clone()
        best = torch.topk(base, top[0], dim=-1).indices
        ranked = base - 1e6
        ranked.scatter_(-1, best, 1e3 + quality.gather(-1, best))
        return ranked

    search_module.item_scores = reranked

    cells = sorted((args.study / args.protocol / args.arm).glob("seed-*/cell.json"))
    for cell_file in cells:
        cell = json.loads(cell_file.read_text())
        checkpoint = ROOT / cell["model_folder"] / "checkpoint"
        search = checkpoint_search(checkpoint)
        grid = [
            (v, w, int(m))
            for v in _values(args.lambdas)
            for w in _values(args.reward_weights)
            for m in _values(args.rerank_top)
        ]
        for value, reward_weight, rerank_top in grid:
            weight[0], top[0] = value, rerank_top
            config = search.model_copy(update={"reward_weight": reward_weight})
            policy = CheckpointPolicy(checkpoint, environment.catalogue, config)
            row = {"seed": cell["seed"], "lambda": value, "reward_weight": reward_weight, "rerank_top": rerank_top}
            for mode in args.modes.split(","):
                log = run_episodes(
                    environment.rewards,
                    environment.quit_rule,
                    mode,
                    policy,
                    environment.start_users,
                    len(cell["modes"][mode]["returns"]),
                    cell["seed"],
                )
                row[mode] = {
                    "R_cumu": round(float(np.mean(log.returns)), 2),
                    "study_cell": round(float(np.mean(cell["modes"][mode]["returns"])), 2),
                    "Length": round(float(np.mean(log.lengths)), 2),
                    "distinct_items": len(np.unique(np.concatenate(log.actions))),
                }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
