"""Evaluation benchmark and published results.

Measures, in one run on a fresh store: the MovieLens-1M environment build (factorisation + item distances) under
both protocols, and episodes per second of the batched evaluation loop over 1,000 episodes per mode. Then evaluates
random and popularity policies on MovieLens-1M (FB, NX_0, NX_10; paper and strict; 1,000 episodes x 5 seeds) and on
SARDINE SingleItem-Static (popularity learned from an epsilon = 0.5 oracle log of 500 users), plus leave-last-out
ranking metrics of popularity on MovieLens-1M, and writes them as RESULTS.md.

    python benchmarks/eval.py [--results RESULTS.md] [--episodes 1000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for name in ("DO_NOT_TRACK", "GX_ANALYTICS_ENABLED", "PREFECT_SERVER_ANALYTICS_ENABLED"):
    os.environ.setdefault(name, "false" if name != "DO_NOT_TRACK" else "true")

SARDINE_ENV = "sardine/SingleItem-Static-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    import numpy as np

    from mdt4rec_core.config import MODES, RunConfig, load_dataset_config, resolve_dataset
    from mdt4rec_core.data.store import Store
    from mdt4rec_core.envs import sardine
    from mdt4rec_core.envs.api import build_env, evaluate_policy
    from mdt4rec_core.envs.build import load_environment
    from mdt4rec_core.envs.ranking import leave_last_out, ranking_metrics
    from tasks.ingest import run_ingest

    work = Path(tempfile.mkdtemp(prefix="mdt4rec-eval-"))
    try:
        store = str(work / "store")
        run_ingest(RunConfig(dataset="ml-1m", store=store), resolve_dataset("ml-1m"))
        builds = {protocol: build_env(store, "ml-1m", protocol) for protocol in ("paper", "strict")}
        speed = {mode: evaluate_policy(store, "ml-1m", "random", mode, 1000, 1, "paper") for mode in MODES}
        rows = []
        for protocol in ("paper", "strict"):
            for policy in ("random", "popularity"):
                for mode in MODES:
                    rows.append(evaluate_policy(store, "ml-1m", policy, mode, args.episodes, args.seeds, protocol))
        sardine_log = run_ingest(
            RunConfig(dataset=sardine.dataset_name(SARDINE_ENV), store=store),
            resolve_dataset(
                sardine.dataset_name(SARDINE_ENV), sardine.land_log(Store(store), SARDINE_ENV, 500, 0.5, 0), "parquet"
            ),
        )
        sardine_episodes = max(args.episodes // 10, 10)
        for policy in ("random", "popularity"):
            for mode in MODES:
                rows.append(
                    evaluate_policy(
                        store, "sardine:" + SARDINE_ENV, policy, mode, sardine_episodes, args.seeds, "paper"
                    )
                )
        environment = load_environment(Store(store), load_dataset_config("ml-1m"), "paper")
        events = Store(store).scan_interactions("ml-1m").collect()
        split = leave_last_out(events, environment.catalogue)
        popularity_scores = np.broadcast_to(environment.item_counts.astype(float), split.seen.shape)
        ranking = ranking_metrics(popularity_scores, split, ks=(10, 20))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("environment builds:")
    for protocol, info in builds.items():
        print(f"  ml-1m {protocol}: {info['seconds']:.1f} s, quit rule {info['quit_rule']}")
    print("batched evaluation loop, random policy, 1,000 episodes:")
    for mode, r in speed.items():
        print(f"  {mode}: {r['episodes_per_second']:,.0f} episodes/s ({r['seconds']:.3f} s)")
    args.results.write_text(results_markdown(rows, sardine_log, ranking, args, builds))
    print(f"wrote {args.results}")
    print(
        json.dumps(
            {"builds": builds, "speed": {m: r["episodes_per_second"] for m, r in speed.items()}, "ranking": ranking},
            default=str,
        )
    )


def results_markdown(rows, sardine_log, ranking, args, builds) -> str:
    def interval(value, ci, seed_ci):
        return f"{value:.2f} ± {ci:.2f} (seeds ± {seed_ci:.2f})"

    lines = [
        "# Results",
        "",
        f"Produced by `python benchmarks/eval.py` on {dt.date.today().isoformat()}. Mean ± half-width of the 95 %",
        "interval over all episodes, and (in brackets) over the per-seed means (Student t). R_avg = mean R_cumu /",
        "mean Length.",
        "",
        "## MovieLens-1M (EasyRL4Rec-style environment)",
        "",
        f"{args.episodes:,} episodes x {args.seeds} seeds per row. Quit rule: distance < threshold to one of the last",
        "7 items. Paper: threshold 75, ground truth on 90 % of all ratings, all users. Strict: "
        f"{builds['strict']['start_users']:,} held-out users start every episode, the ground truth is fitted on",
        "their ratings only, threshold "
        f"{builds['strict']['quit_rule']['threshold']:.1f} (the 31st percentile of their item distances, where 75",
        "falls among the paper environment's).",
        "",
        "| protocol | policy | mode | R_cumu | Length | R_avg |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["env"] != "ml-1m":
            continue
        lines.append(
            f"| {r['protocol']} | {r['policy']} | {r['mode']} | "
            f"{interval(r['R_cumu'], r['R_cumu_ci95'], r['R_cumu_seed_ci95'])} | "
            f"{r['Length']:.2f} ± {r['Length_ci95']:.2f} | {r['R_avg']:.3f} |"
        )
    lines += [
        "",
        "Published anchors (paper protocol, FB, R_cumu): MDT4Rec 38.64, DORL 45.77, A2C 32.43, DQN 21.96, CRR 10.13,",
        "CQL 9.89, BCQ 9.54.",
        "",
        "## SARDINE SingleItem-Static",
        "",
        "Episodes of 100 steps (no quit rule; NX_10 stops at 10); reward = click. Popularity is learned from an",
        f"epsilon-greedy oracle log (epsilon 0.5, 500 users, {sardine_log['rows_accepted']:,} events) ingested",
        "into the store.",
        "",
        "| policy | mode | R_cumu | Length | R_avg |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["env"].startswith("sardine:"):
            continue
        lines.append(
            f"| {r['policy']} | {r['mode']} | "
            f"{interval(r['R_cumu'], r['R_cumu_ci95'], r['R_cumu_seed_ci95'])} ({r['episodes']:,} episodes) | "
            f"{r['Length']:.0f} | {r['R_avg']:.3f} |"
        )
    lines += [
        "",
        "## Offline ranking, MovieLens-1M, leave-last-out",
        "",
        "Popularity (interaction counts), full catalogue, each user's earlier items excluded.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in ranking.items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
