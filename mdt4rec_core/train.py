"""The training loop: random K-step windows from the trajectory store, AdamW with warmup then cosine decay, gradient
clipping, bf16 autocast on CUDA, periodic validation on held-out users, safetensors checkpoints, resume after a kill.

Runs in one process, or under ``torchrun --nproc-per-node N`` (DDP; gloo on CPU, nccl on GPU): every rank draws its
own windows, rank 0 validates and writes checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from mdt4rec_core.config import DataShape, ModelConfig, RunConfig, TrainConfig, flatten_keys
from mdt4rec_core.data.batch import TrajectoryBatch
from mdt4rec_core.data.item_quality import QUALITY_PRIOR_WEIGHT, shrunk_means
from mdt4rec_core.data.prefetch import prefetched
from mdt4rec_core.data.schema import USER_ID
from mdt4rec_core.data.windows import EpisodeArrays, episode_arrays, sample_windows
from mdt4rec_core.errors import InputError
from mdt4rec_core.model.checkpoint import load_checkpoint, save_checkpoint, saved_state
from mdt4rec_core.model.language import TextCorpus, item_corpus
from mdt4rec_core.model.losses import trajectory_losses
from mdt4rec_core.model.network import MDT4Rec
from mdt4rec_core.model.placement import resolve_device
from mdt4rec_core.model.text import item_text_embeddings

NO_DECAY = ("bias", "norm", "ln_", "embed", "item_ids", "positions")
HISTORY = ("train_loss", "validation_loss", "validation_action_ce")  # [step, value] lists kept across resumes
READ_BACK_EVERY = 10
"""Training losses stay on the device and are read back (one host sync) every this many steps, and before a
validation or a checkpoint."""
START_FRESH = "train into another --out (or delete {out}) to start fresh"


@dataclass(frozen=True)
class TrainingData:
    """Episodes as arrays, split into training and validation episodes; ``shape`` the sizes the network takes from
    them; ``metadata`` travels with checkpoints."""

    arrays: EpisodeArrays
    train_episodes: np.ndarray
    validation_episodes: np.ndarray
    catalogue: pl.DataFrame
    shape: DataShape
    metadata: dict
    corpus: TextCorpus | None = None  # item texts for the language-model term (pre-trained backbones only)
    item_text: torch.Tensor | None = None  # (I, text_dim) frozen item text embeddings when the model uses them
    item_factors: torch.Tensor | None = None  # (I, factor_dim) frozen item vectors from the logs when it uses them
    item_quality: torch.Tensor | None = None  # (I,) shrunk mean reward of each item over the training episodes


@dataclass(frozen=True)
class StepInputs:
    """What one training step draws: the seed of its dropout, its windows, and item texts for the language-model
    term (token ids and mask, or None)."""

    torch_seed: int
    batch: TrajectoryBatch
    text: tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True)
class StepReport:
    """What the loop reports after each optimisation step (rank 0 only): the step reached out of ``max_steps``, the
    step's metrics by name (``train_loss``; after a validation also ``validation_loss`` and
    ``validation_action_ce``), the training windows per second so far and the wall-clock time (Unix seconds)."""

    step: int
    max_steps: int
    metrics: dict[str, float]
    windows_per_second: float
    time: float


def data_shape(steps: pl.DataFrame, items: int, factor_dim: int) -> DataShape:
    """The sizes of a trajectory set's ``steps`` (TRAJECTORY_SCHEMA) with ``items`` catalogue items: the widest
    state, the longest episode, the largest return-to-go; ``factor_dim`` the width of the item vectors it gives."""
    return DataShape(
        items=items,
        state_length=max(1, int(steps["state_items"].list.len().max() or 0)),
        max_timestep=int(steps["step"].max()) + 1,
        max_return=float(max(1.0, steps["return_to_go"].max())),
        factor_dim=factor_dim,
    )


def training_data(
    steps: pl.DataFrame, catalogue: pl.DataFrame, shape: DataShape, config: TrainConfig, metadata: dict
) -> TrainingData:
    """Episodes of users whose id hashes below ``validation_fraction`` are kept for validation; the item quality is
    read from the training episodes only."""
    arrays = episode_arrays(steps, shape.state_length, catalogue.height)
    validation = validation_users(pl.Series(arrays.users), config.validation_fraction).to_numpy()
    training = steps.filter(~validation_users(steps[USER_ID], config.validation_fraction))
    quality = shrunk_means(
        training["action"].to_numpy(), training["reward"].to_numpy(), catalogue.height, QUALITY_PRIOR_WEIGHT
    )
    return TrainingData(
        arrays,
        np.flatnonzero(~validation),
        np.flatnonzero(validation),
        catalogue,
        shape,
        metadata,
        item_quality=torch.as_tensor(quality, dtype=torch.float32),
    )


def validation_users(user_ids: pl.Series, fraction: float) -> pl.Series:
    """True for the users (a stable hash of the id) whose episodes are held out of training for validation."""
    return (user_ids.hash(seed=11) % 10_000) < int(fraction * 10_000)


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    """AdamW groups chosen by parameter name: no decay for biases, norms and embeddings; the parameters outside the
    backbone (new, randomly initialised) learn ``new_parameters_lr_scale`` times faster than the backbone's."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (any(tag in name for tag in NO_DECAY), not name.startswith("backbone."))
            groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else config.weight_decay,
            "lr": config.learning_rate * (config.new_parameters_lr_scale if new else 1.0),
        }
        for (no_decay, new), params in sorted(groups.items())
    ]


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to 0.1 at ``max_steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(run: RunConfig, data: TrainingData, out: Path, progress: Callable[[StepReport], None] | None = None) -> dict:
    """Train ``run.model`` with ``run.train`` (or resume training in ``out``) and return the run's summary
    (JSON-ready); checkpoints keep ``run`` beside the weights. ``progress``, when given, receives a StepReport after
    every step."""
    model_config, config = run.model, run.train
    rank, world = _distributed()
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = MDT4Rec(model_config, data.shape, data.item_text, data.item_factors, data.item_quality).to(device)
    if config.compile:
        model.backbone.compile()  # in place: parameter names, and so checkpoints, stay as they are
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, config))
    state_file, checkpoint = out / "training_state.json", out / "checkpoint"
    start, history = 0, {name: [] for name in HISTORY}
    if state_file.is_file():
        start, history = _resume(model, optimizer, scheduler, out, data.metadata, config.max_steps)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    started, windows = time.perf_counter(), 0
    pin = device.type == "cuda"

    def step_inputs(step: int) -> StepInputs:
        """What step ``step`` draws, from a generator that depends only on (seed, rank, step): resumable."""
        rng = np.random.default_rng([config.seed, rank, step])
        torch_seed = int(rng.integers(2**62))  # dropout too depends only on (seed, rank, step)
        batch = sample_windows(
            data.arrays,
            data.train_episodes,
            config.batch_size,
            model_config.context_steps,
            rng,
            config.padding_side,
            config.unconditioned_fraction,
        )
        text = None
        if data.corpus is not None and model_config.loss.lm_weight > 0:
            text = data.corpus.sample(config.text_batch_size, rng)
        if pin:
            batch = _pinned(batch)
        return StepInputs(torch_seed, batch, text)

    pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not yet read back
    with _progress_bar(rank) as bar:
        task = bar.add_task("train", total=config.max_steps, completed=start, loss=float("nan"), rate=0.0)

        def read_back() -> None:
            """One host sync for the pending losses: history, progress bar and reports, in step order."""
            values = torch.stack([loss for _, loss in pending]).float().tolist() if pending else []
            rate = windows / (time.perf_counter() - started)
            for (step, _), value in zip(pending, values, strict=True):
                history["train_loss"].append([step, value])
                bar.update(task, completed=step, loss=value, rate=rate)
                if rank == 0 and progress is not None:
                    progress(StepReport(step, config.max_steps, _values_at(history, step), rate, time.time()))
            pending.clear()

        steps = range(start, config.max_steps)
        for step, inputs in zip(steps, prefetched(step_inputs, steps), strict=True):
            model.train()
            torch.manual_seed(inputs.torch_seed)
            batch = _to(inputs.batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                losses = trajectory_losses(trained(batch), batch, model_config, data.shape)
                if inputs.text is not None:
                    ids, mask = inputs.text
                    losses["language"] = model.backbone.language_loss(ids.to(device), mask.to(device))
                    losses["total"] = losses["total"] + model_config.loss.lm_weight * losses["language"]
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            windows += config.batch_size
            pending.append((step + 1, losses["total"].detach()))
            last = step + 1 == config.max_steps
            validate = rank == 0 and ((step + 1) % config.validate_every == 0 or last) and len(data.validation_episodes)
            save = rank == 0 and ((step + 1) % config.checkpoint_every == 0 or last)
            if validate:
                validation = validation_losses(model, data, model_config, config, device)
                history["validation_loss"].append([step + 1, validation["total"]])
                history["validation_action_ce"].append([step + 1, validation["action"]])
            if validate or save or last or (step + 1) % READ_BACK_EVERY == 0:
                read_back()
            if save:
                _save(model, optimizer, scheduler, data, run, out, step + 1, history)
    seconds = time.perf_counter() - started
    if world > 1:
        dist.barrier()
    counts = model.parameter_counts()
    losses_seen = history["train_loss"]
    return {
        "steps": config.max_steps,
        "resumed_from": start,
        "train_loss_first": losses_seen[0][1] if losses_seen else None,
        "train_loss_last": losses_seen[-1][1] if losses_seen else None,
        "val_loss": history["validation_loss"][-1][1] if history["validation_loss"] else None,
        "val_action_ce": history["validation_action_ce"][-1][1] if history["validation_action_ce"] else None,
        "popularity_action_ce": popularity_cross_entropy(data),
        "uniform_action_ce": math.log(data.shape.items),
        **counts,
        "windows_per_second": windows / seconds if seconds else None,
        "tokens_per_second": 3 * model_config.context_steps * windows / seconds if seconds else None,
        "seconds": seconds,
        "checkpoint": str(checkpoint),
        "world_size": world,
        "history": history,
    }


def _values_at(history: dict[str, list], step: int) -> dict[str, float]:
    """The values ``history`` recorded at ``step``, by name."""
    return {name: points[-1][1] for name, points in history.items() if points and points[-1][0] == step}


def _validation_batches(data: TrainingData, model_config: ModelConfig, config: TrainConfig):
    """The fixed validation windows (the same ones at every validation), all without returns-to-go: the logged
    return-to-go of a step tells whether the user left there, which would flatter the action cross-entropy against
    models that have no such input; and only such windows validate the max-return heads."""
    rng = np.random.default_rng([config.seed, 999])
    for _ in range(config.validation_batches):
        yield sample_windows(
            data.arrays,
            data.validation_episodes,
            config.batch_size,
            model_config.context_steps,
            rng,
            config.padding_side,
            unconditioned_fraction=1.0,
        )


@torch.no_grad()
def validation_losses(
    model: MDT4Rec, data: TrainingData, model_config: ModelConfig, config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Mean ``total`` loss and held-out action cross-entropy (``action``, nats) over the validation windows."""
    model.eval()
    sums = {"total": 0.0, "action": 0.0}
    for batch in _validation_batches(data, model_config, config):
        losses = trajectory_losses(model(_to(batch, device)), batch, model_config, data.shape)
        for name in sums:
            sums[name] += float(losses[name])
    return {name: value / config.validation_batches for name, value in sums.items()}


def popularity_cross_entropy(data: TrainingData) -> float | None:
    """Held-out action cross-entropy (nats) of the training actions' frequencies (add-one smoothed) on the
    validation episodes' steps: the bar a sequence model has to clear."""
    if not len(data.validation_episodes):
        return None
    arrays = data.arrays
    counts = np.bincount(arrays.actions[arrays.step_rows(data.train_episodes)], minlength=arrays.items) + 1.0
    return float(-np.log(counts / counts.sum())[arrays.actions[arrays.step_rows(data.validation_episodes)]].mean())


def _save(model, optimizer, scheduler, data: TrainingData, run: RunConfig, out: Path, step: int, history: dict) -> None:
    """Checkpoint, optimizer and schedule, then the state file last: a kill before it resumes from the previous."""
    save_checkpoint(model, data.catalogue, out / "checkpoint", data.metadata, run)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, out / ".optimizer.pt.tmp")
    (out / ".optimizer.pt.tmp").replace(out / "optimizer.pt")
    (out / ".training_state.json.tmp").write_text(json.dumps({"step": step, "history": history}))
    (out / ".training_state.json.tmp").replace(out / "training_state.json")


def _resume(model, optimizer, scheduler, out: Path, metadata: dict, max_steps: int) -> tuple[int, dict]:
    """Continue the run in ``out``: its step, history, weights, optimizer and schedule. A run of another model or on
    another trajectory set, or a damaged run file, is an InputError (resuming would report the old checkpoint as
    trained on the new data)."""
    restored, _, saved_metadata = load_checkpoint(out / "checkpoint")
    _check_same_run(out, restored.config, model.config, saved_metadata, metadata)
    step, history = _read_training_state(out / "training_state.json")
    if step > max_steps:
        raise InputError(
            f"{out} already holds {step} training steps, more than train.max_steps {max_steps}: raise --max-steps, "
            f"or {START_FRESH.format(out=out)}"
        )
    model.load_state_dict(saved_state(restored), strict=False)
    _load_optimizer(optimizer, scheduler, out / "optimizer.pt")
    return step, history


def _check_same_run(out: Path, saved: ModelConfig, config: ModelConfig, saved_metadata: dict, metadata: dict) -> None:
    """Refuse to resume a checkpoint trained on other data or with other model settings, naming the difference."""
    saved_data = (saved_metadata["dataset"], saved_metadata["trajectory_version"])
    data = (metadata["dataset"], metadata["trajectory_version"])
    if saved_data != data:
        raise InputError(
            f"{out} holds a run trained on {saved_data[0]} trajectory version {saved_data[1]}, not on the current "
            f"{data[0]} trajectory version {data[1]}: {START_FRESH.format(out=out)}"
        )
    changes = _config_changes(saved, config)
    if changes:
        raise InputError(
            f"{out} holds a run of other model settings ({'; '.join(changes)}): {START_FRESH.format(out=out)}"
        )


def _config_changes(saved: ModelConfig, config: ModelConfig) -> list[str]:
    """``key: saved -> new`` for every model setting (dotted key) that differs between the two configurations."""
    before, after = dict(flatten_keys(saved.model_dump())), dict(flatten_keys(config.model_dump()))
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in after if before.get(key) != after.get(key)]


def _read_training_state(path: Path) -> tuple[int, dict]:
    """The step the run reached and its loss history (each of HISTORY: a list of [step, value])."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        step, history = int(state["step"]), {name: list(state["history"].get(name, [])) for name in HISTORY}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # ValueError: JSON and Unicode errors too
        raise InputError(
            f"{path}: damaged training state ({exc.__class__.__name__}); {START_FRESH.format(out=path.parent)}"
        ) from None
    if step < 0:
        raise InputError(f"{path}: damaged training state (step {step}); {START_FRESH.format(out=path.parent)}")
    return step, history


def _load_optimizer(optimizer, scheduler, path: Path) -> None:
    """The optimizer's and the schedule's state (tensors and numbers only: nothing unpickled)."""
    try:
        saved = torch.load(path, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise InputError(
            f"{path}: damaged optimizer state ({exc.__class__.__name__}); {START_FRESH.format(out=path.parent)}"
        ) from None


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _to(batch, device):
    for name, value in vars(batch).items():
        setattr(batch, name, value.to(device, non_blocking=True))
    return batch


def _pinned(batch):
    """The batch in page-locked host memory, so that copies to the GPU run asynchronously."""
    for name, value in vars(batch).items():
        setattr(batch, name, value.pin_memory())
    return batch


def _progress_bar(rank: int) -> Progress:
    """A progress bar for rank 0 on a terminal (none in a log file or a captured stream)."""
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[rate]:.1f} windows/s"),
        TimeElapsedColumn(),
        disable=rank != 0 or not Console().is_terminal,
        transient=False,
    )


def train_on_store(run: RunConfig, out: Path, progress: Callable[[StepReport], None] | None = None) -> dict:
    """Train on the current trajectory set of ``run.dataset`` in ``run.store`` (``progress``: see ``train``)."""
    from mdt4rec_core.data.store import Store
    from mdt4rec_core.data.trajectories import load_trajectories

    trajectories = load_trajectories(Store(run.store), run.dataset)
    if trajectories is None:
        raise InputError(f"dataset {run.dataset!r} has no trajectories in {run.store}: run mdt4rec ingest first")
    return train_on_trajectories(run, trajectories, out, progress)


def train_on_trajectories(
    run: RunConfig, trajectories, out: Path, progress: Callable[[StepReport], None] | None = None
) -> dict:
    """Train on ``trajectories`` (a TrajectorySet of ``run.dataset``; its item table in ``run.store``, when stored,
    gives item texts; ``progress``: see ``train``)."""
    from mdt4rec_core.data.store import Store

    stats = trajectories.stats
    factors = trajectories.item_factors if run.model.item_factors else trajectories.item_factors[:, :0]
    shape = data_shape(trajectories.steps, trajectories.catalogue.height, factors.shape[1])
    metadata = {
        "dataset": run.dataset,
        "trajectory_version": stats.version,
        "feedback_min": stats.feedback_min,
        "feedback_max": stats.feedback_max,
    }
    data = training_data(trajectories.steps, trajectories.catalogue, shape, run.train, metadata)
    if shape.factor_dim:
        data = replace(data, item_factors=torch.as_tensor(factors))
    items_table = f"items/dataset={run.dataset}/items.parquet"
    store = Store(run.store)
    if store.exists(items_table):
        items = store.read_parquet(items_table, columns=["item_id", "text"])
        data = replace(data, corpus=item_corpus(items["text"].to_list(), run.model.backbone))
    else:
        items = pl.DataFrame(schema={"item_id": pl.String, "text": pl.String})
    if run.model.text_dim:
        # Catalogue order; an item without a row in the item table is described by its id.
        texts = trajectories.catalogue.join(items, on="item_id", how="left", maintain_order="left").select(
            pl.coalesce("text", "item_id")
        )
        data = replace(data, item_text=item_text_embeddings(texts.to_series().to_list(), run.model.backbone.cache_dir))
    return {"dataset": run.dataset, "trajectory_version": stats.version, **train(run, data, out, progress)}


def main(argv: list[str] | None = None) -> int:
    """``python -m mdt4rec_core.train --config RUN.json --out FOLDER``: one rank of a multi-process training (under
    torchrun) of a resolved RunConfig; rank 0 prints the summary as one JSON line, bad input is one ``error:``
    line and exit status 2."""
    import argparse
    import sys

    from mdt4rec_core.config import load_run_config_file

    parser = argparse.ArgumentParser(prog="python -m mdt4rec_core.train")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    arguments = parser.parse_args(argv)
    try:
        summary = train_on_store(load_run_config_file(arguments.config), arguments.out)
    except InputError as exc:  # ConfigError is one too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
