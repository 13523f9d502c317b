"""Maximum in-support return search (DESIGN section 5).

For a user at step t of an episode: candidate history lengths w = min(t + 1, K), w - delta, ... >= 1 (keeping only
the last w steps forgets a bad past: that is how trajectories are stitched). Pass 1 runs every candidate with the
running return-to-go and reads the max-return estimate Rmax_w at s_t; the return-to-go to condition on is Rmax_w
itself (``expectile``) or a draw from the return-bin distribution reweighted towards high returns, p(R | expert)
proportional to exp(kappa R) p(R) (``expert_sample``). Pass 2 runs every candidate with that return-to-go and reads
the action logits; the recommendation is the top-k of the candidate with the largest Rmax_w, forbidden items masked.

All candidates of all users go through the network as one batch per pass: the candidates of a user are suffixes of
one window, packed without padding under a block-diagonal causal mask (``mdt4rec_core.model.packing``), and pass 2
runs only the R_t token of each candidate against pass 1's key/value cache. ``search_one_at_a_time`` is the
reference (batch size 1 per candidate, two full forward passes, as EDT's implementation does it) that tests and
benchmarks compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mdt4rec_core.data.windows import EpisodeArrays, collate
from mdt4rec_core.model.network import MDT4Rec


@dataclass(frozen=True)
class SearchConfig:
    delta: int = 2
    conditioning: Literal["expert_sample", "expectile"] = "expert_sample"
    kappa: float = 10.0
    top_k: int = 10
    search: bool = True  # False: the "-Max" ablation (full history, plain DT conditioning)
    max_batch_tokens: int | None = 4096  # each pass runs its packed rows in slices of at most this many tokens


@dataclass
class EpisodeContext:
    """One user's current episode up to the decision at step t (t + 1 states, t actions).

    ``state_items`` (t+1, N) catalogue indices (padding: the catalogue size), ``state_feedback`` (t+1, N),
    ``state_mask`` (t+1, N) bool, ``returns_to_go`` (t+1,) the running targets (the last one is the current target),
    ``actions`` (t,), ``forbidden`` (I,) bool or None: items that must not be recommended.
    """

    state_items: np.ndarray
    state_feedback: np.ndarray
    state_mask: np.ndarray
    returns_to_go: np.ndarray
    actions: np.ndarray
    forbidden: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return len(self.returns_to_go)


@dataclass
class Decision:
    """``items`` (k,) recommended; ``chosen_length`` w*; ``lengths`` the candidates, with their max-return estimates
    ``max_returns`` and the return-to-go each was conditioned on in pass 2 (``conditioned_returns``)."""

    items: np.ndarray
    chosen_length: int
    lengths: list[int]
    max_returns: np.ndarray
    conditioned_returns: np.ndarray


def candidate_lengths(steps: int, context: int, delta: int, search: bool = True) -> list[int]:
    """w = min(steps, context), then w - delta, ... down to >= 1 (only w without search)."""
    longest = min(steps, context)
    return list(range(longest, 0, -delta)) if search else [longest]


def _windows(model: MDT4Rec, contexts: list[EpisodeContext], lengths: list[int], last_returns: np.ndarray | None):
    """One TrajectoryBatch row per context holding its last ``lengths[row]`` steps, left-padded to K steps; the
    current step's action is padding. ``last_returns`` (rows,) replaces the current step's return-to-go (None keeps
    the running one)."""
    pad = model.config.items
    steps = np.array([c.steps for c in contexts])
    arrays = EpisodeArrays(
        starts=np.concatenate([[0], np.cumsum(steps)[:-1]]),
        lengths=steps,
        users=np.arange(len(contexts)),
        state_items=np.concatenate([c.state_items for c in contexts]).astype(np.int64),
        state_feedback=np.concatenate([c.state_feedback for c in contexts]).astype(np.float32),
        state_mask=np.concatenate([c.state_mask for c in contexts]),
        returns_to_go=np.concatenate([c.returns_to_go for c in contexts]).astype(np.float32),
        actions=np.concatenate([np.append(c.actions, pad) for c in contexts]).astype(np.int64),  # a_t: unknown
        timesteps=np.concatenate([np.arange(s) for s in steps]),
        items=pad,
    )
    rows = np.arange(len(contexts))
    batch = collate(arrays, rows, steps - 1, model.config.context_steps, "left", np.asarray(lengths))
    if last_returns is not None:
        batch.returns_to_go[:, -1] = torch.as_tensor(last_returns)
    device = next(model.parameters()).device
    for name, value in vars(batch).items():
        setattr(batch, name, value.to(device))
    return batch


def _plan(
    model: MDT4Rec, contexts: list[EpisodeContext], config: SearchConfig, uniforms: np.ndarray | None, seed: int
) -> tuple[list[list[int]], np.ndarray]:
    """Candidate lengths per user, and one uniform draw per (user, candidate) for the expert sampling."""
    lengths = [candidate_lengths(c.steps, model.config.context_steps, config.delta, config.search) for c in contexts]
    if uniforms is None:
        uniforms = np.random.default_rng(seed).random(sum(len(w) for w in lengths))
    return lengths, uniforms


def _conditioning(
    model: MDT4Rec, max_returns: torch.Tensor, bin_logits: torch.Tensor, config: SearchConfig, uniforms: torch.Tensor
) -> torch.Tensor:
    """(rows,) return-to-go to condition pass 2 on. ``uniforms`` (rows,) in [0, 1) drive the expert sampling."""
    if config.conditioning == "expectile":
        return max_returns
    bins = model.config.return_bins
    centres = (torch.arange(bins, device=bin_logits.device) + 0.5) * model.config.max_return / bins
    expert = torch.log_softmax(bin_logits, dim=-1) + config.kappa * centres  # log p(R) + kappa R
    cdf = torch.softmax(expert, dim=-1).cumsum(dim=-1)
    index = torch.searchsorted(cdf, uniforms.unsqueeze(-1).to(cdf.dtype)).squeeze(-1).clamp(max=bins - 1)
    return centres[index]


@torch.no_grad()
def search(
    model: MDT4Rec,
    contexts: list[EpisodeContext],
    config: SearchConfig,
    uniforms: np.ndarray | None = None,
    seed: int = 0,
) -> list[Decision]:
    """Decisions for all ``contexts`` with two batched passes. ``uniforms`` (rows,) fixes the expert draws (one per
    (user, candidate) in order); by default they come from ``seed``."""
    model.eval()
    lengths, uniforms = _plan(model, contexts, config, uniforms, seed)
    batch = _windows(model, contexts, [candidates[0] for candidates in lengths], None)
    condition = None
    if config.search:
        draws = torch.as_tensor(uniforms, device=batch.actions.device)
        condition = lambda max_return, bins: _conditioning(model, max_return, bins, config, draws)  # noqa: E731
    output = model.decide(batch, lengths, condition, config.max_batch_tokens)
    return _decide(
        contexts,
        lengths,
        output.action_logits.cpu(),
        output.max_return.cpu(),
        output.returns_to_go.cpu(),
        config,
    )


@torch.no_grad()
def search_one_at_a_time(
    model: MDT4Rec,
    contexts: list[EpisodeContext],
    config: SearchConfig,
    uniforms: np.ndarray | None = None,
    seed: int = 0,
) -> list[Decision]:
    """The same decisions, one candidate per forward pass (the loop EDT's reference implementation runs)."""
    model.eval()
    lengths, uniforms = _plan(model, contexts, config, uniforms, seed)
    logits, max_returns, conditioned = [], [], []
    row = 0
    for context, candidates in zip(contexts, lengths, strict=True):
        for w in candidates:
            first = model(_windows(model, [context], [w], None), last_step_only=True)
            if config.search:
                value = _conditioning(
                    model,
                    first.max_return[:, -1],
                    first.return_bin_logits[:, -1],
                    config,
                    torch.as_tensor(uniforms[row : row + 1]),
                )
                second = model(_windows(model, [context], [w], value.numpy()), last_step_only=True)
                logits.append(second.action_logits[:, -1])
                max_returns.append(second.max_return[:, -1])
            else:
                value = torch.as_tensor([context.returns_to_go[-1]], dtype=torch.float32)
                logits.append(first.action_logits[:, -1])
                max_returns.append(first.max_return[:, -1])
            conditioned.append(value)
            row += 1
    return _decide(contexts, lengths, torch.cat(logits), torch.cat(max_returns), torch.cat(conditioned), config)


def _decide(contexts, lengths, logits, max_returns, conditioned, config: SearchConfig) -> list[Decision]:
    decisions, row = [], 0
    for context, candidates in zip(contexts, lengths, strict=True):
        span = slice(row, row + len(candidates))
        estimates = max_returns[span].numpy()
        best = int(np.argmax(estimates))
        scores = logits[row + best].clone()
        if context.forbidden is not None:
            scores[torch.as_tensor(context.forbidden)] = -torch.inf
        k = min(config.top_k, int(torch.isfinite(scores).sum()))
        decisions.append(
            Decision(
                items=torch.topk(scores, k).indices.numpy(),
                chosen_length=candidates[best],
                lengths=list(candidates),
                max_returns=estimates,
                conditioned_returns=conditioned[span].numpy(),
            )
        )
        row += len(candidates)
    return decisions
