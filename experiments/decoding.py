"""Decoding levers measured without retraining: the study's trained checkpoints play the study's episodes again (each
seed its own evaluation seed, so the checkpoint's own decoding reproduces the study cells) while

- a rating prior, lambda times each item's shrunk mean logged rating (z-scored over the catalogue; the log rule's
  quality, from the trajectory set's training users), is added to the action logits (``--lambdas``; not part of the
  method), or
- ``search.decoding: quality`` orders the policy's ``quality_from`` best items by their logged quality
  (``--quality-from``, 0: the checkpoint's own decoding). Checkpoints trained before the quality was kept get it from
  the trajectory set, as training computes it.

    python experiments/decoding.py --store store --study studies/ml-1m-cpu [--protocol paper] [--arm mdt4rec]
        [--lambdas 0,0.5,1,2] [--quality-from 0,10,20] [--modes FB,NX_10]
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
    parser.add_argument("--quality-from", default="0", help="decoding: quality with these quality_from (0: off)")
    parser.add_argument("--modes", default="FB,NX_10")
    args = parser.parse_args()

    import numpy as np
    import torch

    from mdt4rec_core.config import load_dataset_config
    from mdt4rec_core.data.item_quality import QUALITY_PRIOR_WEIGHT, shrunk_means
    from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy
    from mdt4rec_core.envs.evaluation import run_episodes
    from mdt4rec_core.model.checkpoint import checkpoint_search
    from mdt4rec_core.model.network import MDT4Rec
    from mdt4rec_core.study import _validation_steps
    from tasks.study import prepare_protocol

    settings = json.loads((args.study / "settings.json").read_text())
    inputs = prepare_protocol(args.store, load_dataset_config(settings.get("dataset", "ml-1m")), args.protocol)
    trajectories, environment = inputs.trajectories, inputs.environment
    training = trajectories.steps.filter(~_validation_steps(trajectories.steps, 0.05))
    quality = shrunk_means(
        training["action"].to_numpy(), training["reward"].to_numpy(), environment.info.items, QUALITY_PRIOR_WEIGHT
    )
    prior = torch.as_tensor((quality - quality.mean()) / quality.std(), dtype=torch.float32)
    weight = [0.0]
    scores = MDT4Rec._action_logits
    MDT4Rec._action_logits = lambda model, hidden, distance: scores(model, hidden, distance) + weight[0] * prior

    cells = sorted((args.study / args.protocol / args.arm).glob("seed-*/cell.json"))
    for cell_file in cells:
        cell = json.loads(cell_file.read_text())
        checkpoint = ROOT / cell["model_folder"] / "checkpoint"
        search = checkpoint_search(checkpoint)
        grid = [(v, int(m)) for v in _values(args.lambdas) for m in _values(args.quality_from)]
        for value, quality_from in grid:
            weight[0] = value
            config = search
            if quality_from:
                config = search.model_copy(update={"decoding": "quality", "quality_from": quality_from})
            policy = CheckpointPolicy(checkpoint, environment.catalogue, config)
            if not policy.model.item_quality.any():
                policy.model.item_quality.copy_(torch.as_tensor(quality))
            row = {"seed": cell["seed"], "lambda": value, "decoding": config.decoding, "quality_from": quality_from}
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
