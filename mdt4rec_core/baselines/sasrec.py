"""SASRec-style supervised next-item model: item embeddings plus learned positions, causal self-attention blocks
(pre-norm), and next-item logits as dot products with the item embeddings (shared input/output table).

Training data: each user's time-ordered actions (all episodes concatenated) cut into consecutive windows of
``max_length + 1`` items that overlap by one, so every action after a user's first is a target exactly once; inside a
window, position t predicts item t + 1 from items 0..t of the window. Loss: cross-entropy over the full catalogue.

As a policy, the input at each step is the episode's initial item followed by the items recommended so far (the last
``max_length`` of them); the recommendation is the allowed item with the largest logit.

Saved as ``model.safetensors`` (weights) beside ``sasrec.json`` (catalogue size and config); nothing is pickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from mdt4rec_core.baselines.logs import LoggedSequences, logged_sequences
from mdt4rec_core.envs.simulator import Observation
from mdt4rec_core.errors import InputError

WEIGHTS, CONFIG = "model.safetensors", "sasrec.json"


@dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_length: int = 50  # items in a model input
    dropout: float = 0.2
    batch_size: int = 128  # windows per step
    learning_rate: float = 1e-3  # AdamW, constant
    max_steps: int = 2000  # optimiser steps
    seed: int = 0


class SASRec(nn.Module):
    """Next-item logits over ``items`` catalogue indices; index ``items`` is the padding token."""

    def __init__(self, items: int, config: SASRecConfig):
        super().__init__()
        self.items, self.config = items, config
        self.item_embedding = nn.Embedding(items + 1, config.dim, padding_idx=items)
        self.position_embedding = nn.Embedding(config.max_length, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        block = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            dim_feedforward=4 * config.dim,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[items].zero_()

    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """``sequences`` (B, L) long item indices, L <= max_length, right-padded with ``items``; returns (B, L, dim)
        states, position t summarising items 0..t (padded positions give meaningless rows; real positions never attend
        to them, the mask being causal)."""
        length = sequences.shape[1]
        positions = torch.arange(length, device=sequences.device)
        hidden = self.dropout(
            self.item_embedding(sequences) * math.sqrt(self.config.dim) + self.position_embedding(positions)
        )
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=sequences.device)
        return self.norm(self.blocks(hidden, mask=mask, is_causal=True))

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """(..., dim) states -> (..., I) next-item logits."""
        return states @ self.item_embedding.weight[: self.items].T

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded sequences -> (B, L, I) logits of the item following each position."""
        return self.scores(self.encode(sequences))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}, folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps({"items": self.items, "config": asdict(self.config)}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> SASRec:
        """The model in eval mode, on the CPU."""
        for name in (WEIGHTS, CONFIG):
            if not (folder / name).is_file():
                raise InputError(f"{folder}: not a SASRec folder ({name} missing)")
        saved = json.loads((folder / CONFIG).read_text())
        model = cls(saved["items"], SASRecConfig(**saved["config"]))
        model.load_state_dict(load_file(folder / WEIGHTS))
        return model.eval()


def windows(logs: LoggedSequences, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """All training windows: (W, max_length + 1) item indices padded with -1, and (W,) their lengths (>= 2)."""
    starts, lengths = [], []
    for user in range(len(logs.users)):
        first, end = int(logs.offsets[user]), int(logs.offsets[user + 1])
        for start in range(first, end - 1, max_length):
            starts.append(start)
            lengths.append(min(max_length + 1, end - start))
    starts_array, lengths_array = np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64)
    columns = np.arange(max_length + 1)
    index = np.minimum(starts_array[:, None] + columns, len(logs.items) - 1)
    padded = np.where(columns < lengths_array[:, None], logs.items[index], -1)
    return padded, lengths_array


def window_loss(model: SASRec, batch: np.ndarray, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of every target of ``batch`` (B, max_length + 1) windows padded with -1."""
    device = model.item_embedding.weight.device
    window = torch.as_tensor(batch, device=device)
    inputs = window[:, :-1].masked_fill(window[:, :-1] < 0, model.items)
    logits = model(inputs)
    return F.cross_entropy(
        logits.reshape(-1, model.items), window[:, 1:].reshape(-1), ignore_index=-1, reduction=reduction
    )


def train_sasrec(steps: pl.DataFrame, items: int, config: SASRecConfig, device: str = "cpu") -> SASRec:
    """A model of ``items`` catalogue indices fitted to the action sequences of ``steps`` (TRAJECTORY_SCHEMA).

    AdamW at a constant learning rate for ``config.max_steps`` steps, each on ``batch_size`` windows drawn uniformly
    with replacement. Initialisation, dropout and batches follow ``config.seed`` only (torch's global CPU RNG is
    left as it was), so training on the CPU is deterministic. Returns the model in eval mode.
    """
    logs = logged_sequences(steps)
    if logs.items.max() >= items:
        raise InputError(f"logged actions go up to {logs.items.max()}, beyond a catalogue of {items} items")
    all_windows, _ = windows(logs, config.max_length)
    if len(all_windows) == 0:
        raise InputError("no user has two logged actions: nothing to predict")
    rng = np.random.default_rng(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SASRec(items, config).to(device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
        model.train()
        for _ in range(config.max_steps):
            loss = window_loss(model, all_windows[rng.integers(len(all_windows), size=config.batch_size)])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def held_out_cross_entropy(model: SASRec, steps: pl.DataFrame, batch_size: int = 256) -> float:
    """Mean next-item cross-entropy in nats over the actions of ``steps`` (every action but each user's first,
    predicted from the preceding items of its training-style window), for comparison with other models' held-out
    action cross-entropy."""
    logs = logged_sequences(steps)
    if logs.items.max() >= model.items:
        raise InputError(f"held-out actions go up to {logs.items.max()}, beyond the model's {model.items} items")
    all_windows, lengths = windows(logs, model.config.max_length)
    if len(all_windows) == 0:
        raise InputError("no user has two logged actions: nothing to predict")
    model.eval()
    total = sum(
        float(window_loss(model, all_windows[start : start + batch_size], reduction="sum"))
        for start in range(0, len(all_windows), batch_size)
    )
    return total / float((lengths - 1).sum())


class SASRecPolicy:
    """Recommend the allowed item with the largest logit given the episode's initial item and recommendations so far.

    ``k_sample``: None recommends the argmax; k draws one of the k best allowed items with probabilities proportional
    to the softmax of their logits (drawn with the ``rng`` passed to ``act``).
    """

    def __init__(self, model: SASRec, k_sample: int | None = None):
        if k_sample is not None and k_sample < 1:
            raise ValueError(f"k_sample must be None or >= 1, got {k_sample}")
        self.model = model.eval()
        self.k_sample = k_sample

    @torch.no_grad()
    def logits(self, observation: Observation) -> torch.Tensor:
        """(B, I) next-item logits for the live episodes."""
        sequence = np.concatenate([observation.initial_items[:, None], observation.history], axis=1)  # (B, T + 1)
        lengths = np.minimum(observation.steps.astype(np.int64) + 1, self.model.config.max_length)
        columns = np.arange(lengths.max())
        index = (observation.steps + 1 - lengths)[:, None] + columns  # the last ``lengths`` items, oldest first
        items = np.take_along_axis(sequence, np.minimum(index, sequence.shape[1] - 1), axis=1)
        inputs = np.where(columns < lengths[:, None], items, self.model.items)
        device = self.model.item_embedding.weight.device
        states = self.model.encode(torch.as_tensor(inputs, device=device))
        last = torch.as_tensor(lengths - 1, device=device)
        return self.model.scores(states[torch.arange(len(lengths), device=device), last]).float().cpu()

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        logits = self.logits(observation)
        if observation.allowed is not None:
            logits = logits.masked_fill(~torch.as_tensor(observation.allowed), -torch.inf)
        if self.k_sample is None:
            return logits.argmax(dim=1).numpy()
        top, items = logits.topk(min(self.k_sample, logits.shape[1]), dim=1)
        probabilities = torch.softmax(top.double(), dim=1).numpy()  # forbidden items among the top k get 0
        cumulative = probabilities.cumsum(axis=1)
        draws = rng.random((len(top), 1)) * cumulative[:, -1:]
        choice = np.minimum((cumulative <= draws).sum(axis=1), top.shape[1] - 1)
        return items.numpy()[np.arange(len(choice)), choice]
