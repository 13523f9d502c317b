"""The GPU figures in one run (about 5 minutes on one H200), written as one JSON file and one markdown table.

1. Training throughput of the paper preset (SmolLM2-135M's architecture, 30 blocks, LoRA r 16 on q/k/v, bf16
   autocast) at batch 64, 256 and 1,024 windows of K = 20 steps (60 tokens): windows/s, tokens/s, peak memory and
   MFU against 989 TFLOP/s (dense bf16), counting 4N FLOPs per token for a frozen base with LoRA and 6N for full
   fine-tuning, N the backbone's parameters that tokens pass through (its blocks; its token embedding is bypassed).
   Attention and the action head over the catalogue are not counted, so MFU is a lower bound.
2. Search per decision over whole episodes (``benchmarks/inference.py``'s synthetic episodes, 30 steps): plain DT,
   the cached search, the re-encoding search, at 256 and 2,048 episodes; the one-at-a-time loop on 4 episodes.
3. Evaluation: episodes/s of the checkpoint policy (a saved random model, loaded back) in a simulator of the
   MovieLens-1M shape (3,706 items, distance quit rule) with random ground truth, FB mode.

Weights are random (speed does not depend on them), sizes are those of the paper preset and MovieLens-1M: nothing
is downloaded or read from a store, so it runs on a machine without internet or data. ``--dry-run`` runs every part
at tiny sizes on the CPU (the tests do), so the script is known to work before a GPU is at hand.

    python benchmarks/gpu.py [--dry-run] [--out DIR]      # DIR: gpu.json and gpu.md (default: $OUT or .)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEAK_BF16_FLOPS = 989e12
"""H100/H200 SXM dense bf16 tensor-core peak, FLOP/s."""


@dataclass(frozen=True)
class Sizes:
    preset: str
    overrides: list[str]
    items: int
    batch_sizes: list[int]
    compiled_batch_sizes: list[int]
    train_steps: int
    warmup_steps: int
    users: list[int]
    loop_users: int
    episode_steps: int
    simulator_users: int
    episodes: int
    reuse_megabytes: float
    max_batch_tokens: int


FULL = Sizes(
    preset="paper",
    overrides=["model.backbone.pretrained=false"],
    items=3706,
    batch_sizes=[64, 256, 1024],
    compiled_batch_sizes=[256],
    train_steps=20,
    warmup_steps=3,
    users=[256, 2048],
    loop_users=4,
    episode_steps=30,
    simulator_users=6040,
    episodes=1000,
    reuse_megabytes=96 * 1024,
    max_batch_tokens=65536,
)
DRY_RUN = Sizes(
    preset="tiny",
    overrides=["model.backbone.kind=tiny-llama", "model.context_steps=4"],
    items=40,
    batch_sizes=[2, 4],
    compiled_batch_sizes=[2],
    train_steps=2,
    warmup_steps=1,
    users=[3, 5],
    loop_users=2,
    episode_steps=6,
    simulator_users=20,
    episodes=6,
    reuse_megabytes=64,
    max_batch_tokens=4096,
)


def backbone_flops_per_token(model) -> tuple[int, int]:
    """(N, FLOPs per token): N the parameters of the backbone's blocks and final norm (what every token passes
    through); 4N with a frozen base (forward 2N, backward to the activations 2N), 6N when its weights train too."""
    backbone = model.backbone.model.base_model
    n = sum(p.numel() for name, p in backbone.named_parameters() if "embed" not in name and "wte" not in name)
    n -= sum(p.numel() for name, p in backbone.named_parameters() if "lora_" in name)
    full = any(p.requires_grad for name, p in backbone.named_parameters() if "lora_" not in name)
    return n, (6 if full else 4) * n


def synthetic_arrays(episodes: int, steps: int, items: int, state_length: int, max_return: float, seed: int = 0):
    """``episodes`` random episodes of ``steps`` steps as EpisodeArrays (training windows are sampled from them)."""
    import numpy as np

    from mdt4rec_core.data.windows import EpisodeArrays

    rng = np.random.default_rng(seed)
    total = episodes * steps
    return EpisodeArrays(
        starts=np.arange(episodes) * steps,
        lengths=np.full(episodes, steps),
        users=np.arange(episodes),
        state_items=rng.integers(0, items, (total, state_length)),
        state_feedback=rng.random((total, state_length)).astype(np.float32),
        state_mask=np.ones((total, state_length), dtype=bool),
        returns_to_go=np.tile(np.linspace(max_return, 0.5, steps), episodes).astype(np.float32),
        actions=rng.integers(0, items, total),
        timesteps=np.tile(np.arange(steps), episodes),
        items=items,
    )


def network(sizes: Sizes, device):
    """The preset's network on ``device`` with MovieLens-1M's shape, random item factors, and its RunConfig."""
    import torch

    from mdt4rec_core.config import DataShape, load_run_config
    from mdt4rec_core.model.network import MDT4Rec

    torch.manual_seed(0)
    run = load_run_config(preset=sizes.preset, overrides=sizes.overrides)
    shape = DataShape(
        items=sizes.items,
        state_length=run.trajectories.state_length,
        max_timestep=sizes.episode_steps,
        max_return=30.0,
        factor_dim=16,
    )
    model = MDT4Rec(run.model, shape, item_factors=torch.randn(sizes.items, 16) * 0.5).to(device)
    return run, shape, model


def training_throughput(sizes: Sizes, device) -> list[dict]:
    """Windows/s, tokens/s, peak memory and MFU of training steps (AdamW, bf16 autocast on CUDA) per batch size, and
    with the backbone compiled (``train.compile``; the warm-up steps pay the compilation) at
    ``compiled_batch_sizes``."""
    import numpy as np
    import torch

    from mdt4rec_core.data.windows import sample_windows
    from mdt4rec_core.model.losses import trajectory_losses
    from mdt4rec_core.train import parameter_groups

    rows = []
    runs = [(b, False) for b in sizes.batch_sizes] + [(b, True) for b in sizes.compiled_batch_sizes]
    for batch_size, compiled in runs:
        run, shape, model = network(sizes, device)
        model.train()
        if compiled:
            model.backbone.compile()
        n, flops_per_token = backbone_flops_per_token(model)
        optimizer = torch.optim.AdamW(parameter_groups(model, run.train), lr=run.train.learning_rate)
        arrays = synthetic_arrays(max(64, batch_size), 40, sizes.items, shape.state_length, shape.max_return)
        episodes = np.arange(len(arrays.lengths))
        rng = np.random.default_rng(0)
        context = run.model.context_steps
        row = {
            "batch_size": batch_size,
            "compiled": compiled,
            "backbone_parameters": n,
            "flops_per_token": flops_per_token,
        }
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            for step in range(sizes.warmup_steps + sizes.train_steps):
                if step == sizes.warmup_steps:
                    _synchronize(device)
                    started = time.perf_counter()
                batch = sample_windows(arrays, episodes, batch_size, context, rng, unconditioned_fraction=0.5)
                for name, value in vars(batch).items():
                    setattr(batch, name, value.to(device, non_blocking=True))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = trajectory_losses(model(batch), batch, run.model, shape)["total"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            _synchronize(device)
        except torch.OutOfMemoryError:
            rows.append({**row, "error": "out of memory"})
            del model, optimizer
            continue
        seconds = (time.perf_counter() - started) / sizes.train_steps
        tokens = batch_size * 3 * context / seconds
        row.update(
            windows_per_second=batch_size / seconds,
            tokens_per_second=tokens,
            seconds_per_step=seconds,
            peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            mfu=tokens * flops_per_token / PEAK_BF16_FLOPS,
            final_loss=float(loss.detach()),
        )
        rows.append(row)
        del model, optimizer
    return rows


def search_costs(sizes: Sizes, device) -> list[dict]:
    """Seconds per decision of each search method over whole synthetic episodes, per number of episodes."""
    import torch

    from benchmarks.inference import synthetic_episodes

    run, shape, model = network(sizes, device)
    model.eval()
    config = run.search.model_copy(
        update={"top_k": 1, "reuse_megabytes": sizes.reuse_megabytes, "max_batch_tokens": sizes.max_batch_tokens}
    )
    rows = []
    for users in sizes.users:
        episodes = synthetic_episodes(users, sizes.episode_steps, sizes.items, shape.state_length, shape.max_return)
        rows.append(_search_row(model, config, episodes, sizes, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _search_row(model, config, episodes, sizes: Sizes, device) -> dict:
    from benchmarks.inference import play
    from mdt4rec_core.inference.incremental import IncrementalSearch
    from mdt4rec_core.inference.search import search, search_one_at_a_time

    plain = config.model_copy(update={"search": False})
    cached = IncrementalSearch(model, config)
    methods = {
        "plain DT (no search)": lambda c, n: search(model, c, plain),
        "cached search": cached.decide,
        "re-encoding search": lambda c, n: search(model, c, config),
    }
    play(lambda c, n: [m(c[:2], n[:2]) for m in methods.values()], episodes, 2)  # warm-up
    row = {"episodes": len(episodes), "steps": sizes.episode_steps}
    for name, method in methods.items():
        cached.reset()
        _synchronize(device)
        seconds = play(_synchronised(method, device), episodes, sizes.episode_steps)
        row[name] = seconds / (len(episodes) * sizes.episode_steps)
        if name == "cached search" and cached.cache is not None:
            row["cache_gib"] = cached.cache.megabytes() / 1024
    loop = episodes[: sizes.loop_users]
    row["one-at-a-time loop"] = play(
        _synchronised(lambda c, n: search_one_at_a_time(model, c, config), device), loop, sizes.episode_steps
    ) / (len(loop) * sizes.episode_steps)
    row["cached_vs_plain"] = row["cached search"] / row["plain DT (no search)"]
    row["loop_vs_cached"] = row["one-at-a-time loop"] / row["cached search"]
    return row


def evaluation_rate(sizes: Sizes, device) -> dict:
    """Episodes/s and decisions/s of a saved checkpoint, loaded as the simulator's policy, in FB episodes."""
    import numpy as np
    import polars as pl

    from mdt4rec_core.envs.checkpoint_policy import CheckpointPolicy
    from mdt4rec_core.envs.evaluation import run_episodes
    from mdt4rec_core.envs.quit_rules import DistanceQuit
    from mdt4rec_core.model.checkpoint import save_checkpoint

    run, _, model = network(sizes, device)
    catalogue = pl.DataFrame({"item_id": [str(i) for i in range(sizes.items)], "index": np.arange(sizes.items)})
    rng = np.random.default_rng(0)
    rewards = rng.uniform(0, 5, (sizes.simulator_users, sizes.items)).astype(np.float32)
    points = rng.normal(size=(sizes.items, 8)).astype(np.float32)
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).astype(np.float32)
    quit_rule = DistanceQuit(distances, float(np.quantile(distances, 0.31)), 7)
    with tempfile.TemporaryDirectory() as folder:
        metadata = {"dataset": "synthetic", "feedback_min": 0.0, "feedback_max": 5.0, "trajectory_version": "none"}
        save_checkpoint(model.cpu(), catalogue, Path(folder), metadata, run)
        config = run.search.model_copy(
            update={"reuse_megabytes": sizes.reuse_megabytes, "max_batch_tokens": sizes.max_batch_tokens}
        )
        policy = CheckpointPolicy(Path(folder), catalogue, config, device=str(device))
        users = np.arange(sizes.simulator_users)
        run_episodes(rewards, quit_rule, "FB", policy, users, min(8, sizes.episodes), 1)  # warm-up
        started = time.perf_counter()
        log = run_episodes(rewards, quit_rule, "FB", policy, users, sizes.episodes, 0)
        _synchronize(device)
        seconds = time.perf_counter() - started
    return {
        "episodes": sizes.episodes,
        "mode": "FB",
        "seconds": seconds,
        "episodes_per_second": sizes.episodes / seconds,
        "decisions_per_second": int(log.lengths.sum()) / seconds,
        "mean_length": float(log.lengths.mean()),
    }


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synchronised(method, device):
    def run(contexts, numbers):
        result = method(contexts, numbers)
        _synchronize(device)
        return result

    return run


def markdown(result: dict) -> str:
    """The figures as the tables BENCHMARKS.md takes."""
    lines = [
        f"GPU benchmark on {result['device_name']} ({result['date']}, `python benchmarks/gpu.py"
        f"{' --dry-run' if result['dry_run'] else ''}`), {result['seconds']:.0f} s in all.",
        "",
        "| training batch | windows/s | tokens/s | peak memory (GiB) | MFU | s/step |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["training"]:
        batch = f"{row['batch_size']}{' (compiled)' if row['compiled'] else ''}"
        if "error" in row:
            lines.append(f"| {batch} | {row['error']} | | | | |")
            continue
        memory = "–" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f}"
        lines.append(
            f"| {batch} | {row['windows_per_second']:,.0f} | {row['tokens_per_second']:,.0f} | {memory} | "
            f"{row['mfu']:.1%} | {row['seconds_per_step']:.3f} |"
        )
    lines += [
        "",
        "| episodes | plain DT ms/decision | cached search | re-encoding search | loop | cached / plain | "
        "loop / cached |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["search"]:
        cells = [row[m] * 1e3 for m in ("plain DT (no search)", "cached search", "re-encoding search")]
        lines.append(
            f"| {row['episodes']:,} | {cells[0]:.3f} | {cells[1]:.3f} | {cells[2]:.3f} | "
            f"{row['one-at-a-time loop'] * 1e3:.1f} | {row['cached_vs_plain']:.2f}x | {row['loop_vs_cached']:.1f}x |"
        )
    evaluation = result["evaluation"]
    lines += [
        "",
        f"Evaluation with the checkpoint policy: {evaluation['episodes']:,} FB episodes in {evaluation['seconds']:.1f} "
        f"s: {evaluation['episodes_per_second']:.1f} episodes/s, {evaluation['decisions_per_second']:.0f} "
        f"decisions/s (mean length {evaluation['mean_length']:.2f}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script runs")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = parser.parse_args()

    import torch

    sizes = DRY_RUN if args.dry_run else FULL
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --dry-run to check the script on the CPU")
    device = torch.device("cpu") if args.dry_run else torch.device("cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()
    result = {
        "dry_run": args.dry_run,
        "date": time.strftime("%Y-%m-%d"),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "preset": sizes.preset,
        "overrides": sizes.overrides,
    }
    for name, part in (("training", training_throughput), ("search", search_costs), ("evaluation", evaluation_rate)):
        part_started = time.perf_counter()
        result[name] = part(sizes, device)
        print(f"{name}: {time.perf_counter() - part_started:.1f} s", flush=True)
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "gpu.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
