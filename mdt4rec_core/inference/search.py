"""Maximum in-support return search: how a trained model picks the items to recommend at a decision.

For a user at step t of an episode: candidate history lengths w = min(t + 1, K), w - delta, ... >= 1 (keeping only
the last w steps forgets a bad past: that is how trajectories are stitched). Pass 1 runs every candidate without a
target (the learned "no target" token in every R slot) and reads the max-return estimate Rmax_w at s_t; the
return-to-go to condition on is Rmax_w itself (``max_return``) or a draw from the return-bin distribution reweighted
towards high returns, p(R | expert) proportional to exp(kappa r) p(R) with r the bin's position in [0, 1]
(``expert_sample``, as EDT does). Pass 2 runs every candidate with its whole return-to-go sequence ending at that
target (the target plus the rewards collected since each step, as training windows have it) and reads the action
logits. The recommendation comes from the candidate with the largest Rmax_w, so pass 2 runs that candidate only;
forbidden items are masked and items chosen by ``argmax``, by ``sample`` (Gumbel top-k among the ``sample_from``
best items at ``temperature``) or by ``quality``: the policy's ``quality_from`` best items ordered by their shrunk
mean reward in the training logs, a batch-constrained choice (as BCQ constrains its Q-maximisation to the actions its
behaviour model gives enough probability): the policy decides where the episode can go, the logs' ratings which of
those items.

All candidates of all users go through pass 1 as one batch: the candidates of a user are suffixes of one window,
packed without padding under a block-diagonal causal mask (``mdt4rec_core.model.packing``). Across the steps of
episodes, ``mdt4rec_core.inference.incremental`` keeps pass 1's keys and values instead.
``search_one_at_a_time`` is the reference (batch size 1 per candidate, two full forward passes, as EDT's
implementation does it) that tests and benchmarks compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mdt4rec_core.config import SearchConfig
from mdt4rec_core.data.windows import EpisodeArrays, collate
from mdt4rec_core.errors import InputError
from mdt4rec_core.model.network import MDT4Rec
from mdt4rec_core.model.placement import inference_precision, model_device


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

    def at(self, step: int) -> EpisodeContext:
        """The context as it was at the decision of ``step`` (its first step + 1 states)."""
        return EpisodeContext(
            state_items=self.state_items[: step + 1],
            state_feedback=self.state_feedback[: step + 1],
            state_mask=self.state_mask[: step + 1],
            returns_to_go=self.returns_to_go[: step + 1],
            actions=self.actions[:step],
            forbidden=self.forbidden,
        )


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


def windows(
    model: MDT4Rec,
    contexts: list[EpisodeContext],
    lengths: list[int],
    targets: np.ndarray | None,
    width: int | None = None,
):
    """One TrajectoryBatch row per context holding its last ``lengths[row]`` steps, left-padded to ``width`` steps
    (default K), on the model's device; the current step's action is padding. ``targets`` (rows,): every
    return-to-go of a row is shifted so that its R_t is the target (None: no target, the "no target" token in every
    R slot)."""
    pad = model.shape.items
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
    conditioned = np.full(len(contexts), targets is not None)
    width = model.config.context_steps if width is None else width
    batch = collate(arrays, rows, steps - 1, width, "left", np.asarray(lengths), conditioned)
    if targets is not None:
        shift = torch.as_tensor(targets, dtype=torch.float32) - batch.returns_to_go[:, -1]
        batch.returns_to_go += shift[:, None] * batch.step_mask
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
    if config.conditioning == "max_return":
        return max_returns
    bins = model.config.return_bins
    position = (torch.arange(bins, device=bin_logits.device) + 0.5) / bins  # the bin's place in [0, 1]
    expert = torch.log_softmax(bin_logits, dim=-1) + config.kappa * position  # log p(R) + kappa r
    cdf = torch.softmax(expert, dim=-1).cumsum(dim=-1)
    index = torch.searchsorted(cdf, uniforms.unsqueeze(-1).to(cdf.dtype)).squeeze(-1).clamp(max=bins - 1)
    return position[index] * model.shape.max_return


def best_candidates(lengths: list[list[int]], max_returns: np.ndarray) -> np.ndarray:
    """(users,) the index, among all candidates numbered user by user, of each user's candidate with the largest
    max-return estimate (the first of equals)."""
    offsets = np.concatenate([[0], np.cumsum([len(candidates) for candidates in lengths])])
    return np.array(
        [offsets[u] + int(np.argmax(max_returns[offsets[u] : offsets[u + 1]])) for u in range(len(lengths))]
    )


def stitch(
    model: MDT4Rec,
    contexts: list[EpisodeContext],
    lengths: list[list[int]],
    max_returns: torch.Tensor,
    bin_logits: torch.Tensor,
    config: SearchConfig,
    uniforms: np.ndarray,
    seed: int,
) -> list[Decision]:
    """The search once pass 1 has estimated every candidate (``max_returns`` (C,), ``bin_logits`` (C, bins)): the
    return-to-go each candidate would be conditioned on, and pass 2 for the candidate with the largest estimate of
    each user, the only one whose action logits a decision reads."""
    targets = _conditioning(
        model, max_returns, bin_logits, config, torch.as_tensor(uniforms, device=max_returns.device)
    )
    max_returns, targets = max_returns.float().cpu(), targets.float().cpu()
    best = best_candidates(lengths, max_returns.numpy())
    chosen = np.concatenate(lengths)[best].tolist()
    batch = windows(model, contexts, chosen, targets[best].numpy())
    output = model.decide(batch, [[w] for w in chosen], config.max_batch_tokens)
    logits = output.action_logits.float().cpu()
    return _decide(contexts, lengths, logits, max_returns, targets, config, seed, item_quality(model, config))


@torch.no_grad()
def search(
    model: MDT4Rec,
    contexts: list[EpisodeContext],
    config: SearchConfig,
    uniforms: np.ndarray | None = None,
    seed: int = 0,
) -> list[Decision]:
    """Decisions for all ``contexts``: pass 1 over every candidate of every user in one packed batch, pass 2 over
    each user's chosen candidate. ``uniforms`` (candidates,) fixes the expert draws (one per (user, candidate) in
    order); by default they come from ``seed``."""
    model.eval()
    with inference_precision(model_device(model), config.precision):
        return _search(model, contexts, config, uniforms, seed)


def _search(model, contexts, config, uniforms, seed) -> list[Decision]:
    lengths, uniforms = _plan(model, contexts, config, uniforms, seed)
    batch = windows(model, contexts, [candidates[0] for candidates in lengths], None)
    if not config.search:  # the full history on the running return-to-go
        output = model.decide(batch, lengths, config.max_batch_tokens)
        return _decide(
            contexts,
            lengths,
            output.action_logits.float().cpu(),
            output.max_return.float().cpu(),
            output.returns_to_go.float().cpu(),
            config,
            seed,
            item_quality(model, config),
        )
    max_returns, bin_logits = model.candidate_estimates(batch, lengths, config.max_batch_tokens)
    return stitch(model, contexts, lengths, max_returns, bin_logits, config, uniforms, seed)


@torch.no_grad()
def search_one_at_a_time(
    model: MDT4Rec,
    contexts: list[EpisodeContext],
    config: SearchConfig,
    uniforms: np.ndarray | None = None,
    seed: int = 0,
) -> list[Decision]:
    """The same decisions, one window per forward pass (the loop EDT's reference implementation runs): pass 1 for
    each candidate, then pass 2 for the chosen one."""
    model.eval()
    with inference_precision(model_device(model), config.precision):
        return _search_one_at_a_time(model, contexts, config, uniforms, seed)


def _search_one_at_a_time(model, contexts, config, uniforms, seed) -> list[Decision]:
    lengths, uniforms = _plan(model, contexts, config, uniforms, seed)
    logits, max_returns, conditioned = [], [], []
    row = 0
    for context, candidates in zip(contexts, lengths, strict=True):
        if not config.search:  # conditioned on the running return-to-go
            running = context.returns_to_go[-1:].astype(np.float32)
            output = model(windows(model, [context], candidates, running), last_step_only=True)
            logits.append(output.action_logits[:, -1])
            max_returns.append(output.max_return[:, -1])
            conditioned.append(torch.as_tensor(running))
            continue
        estimates, targets = [], []
        for w in candidates:
            first = model(windows(model, [context], [w], None), last_step_only=True)
            draw = torch.as_tensor(uniforms[row : row + 1])
            targets.append(_conditioning(model, first.max_return[:, -1], first.return_bin_logits[:, -1], config, draw))
            estimates.append(first.max_return[:, -1])
            row += 1
        best = int(np.argmax(torch.cat(estimates).numpy()))
        second = model(windows(model, [context], [candidates[best]], targets[best].numpy()), last_step_only=True)
        logits.append(second.action_logits[:, -1])
        max_returns.extend(estimates)
        conditioned.extend(targets)
    quality = item_quality(model, config)
    return _decide(
        contexts, lengths, torch.cat(logits), torch.cat(max_returns), torch.cat(conditioned), config, seed, quality
    )


def item_quality(model: MDT4Rec, config: SearchConfig) -> torch.Tensor | None:
    """(I,) the model's item quality on the CPU when ``config`` decodes by it, else None; a model trained before the
    quality was kept is an InputError."""
    if config.decoding != "quality":
        return None
    quality = model.item_quality.float().cpu()
    if not quality.any():
        raise InputError(
            "search.decoding quality: this checkpoint holds no item quality (it was trained before the quality was "
            "kept); train it again, or decode with argmax"
        )
    return quality


def _decide(
    contexts,
    lengths,
    logits,
    max_returns,
    conditioned,
    config: SearchConfig,
    seed: int,
    quality: torch.Tensor | None = None,
) -> list[Decision]:
    """Per user: the candidate with the largest max-return estimate (``max_returns`` (C,)) and the top-k items of its
    action logits ``logits`` (users, I): the argmax, a draw, or (``quality`` (I,), decoding ``quality``) the best
    ``quality_from`` by the logits ordered by quality."""
    generator = torch.Generator().manual_seed(seed + 1)
    best = best_candidates(lengths, max_returns.numpy())
    decisions, row = [], 0
    for user, (context, candidates) in enumerate(zip(contexts, lengths, strict=True)):
        span = slice(row, row + len(candidates))
        scores = logits[user].clone().float()
        if context.forbidden is not None:
            scores[torch.as_tensor(context.forbidden)] = -torch.inf
        allowed = int(torch.isfinite(scores).sum())
        k = min(config.top_k, allowed)
        if config.decoding == "sample":
            pool = torch.topk(scores, min(max(config.sample_from, k), allowed)).indices
            gumbel = -torch.log(-torch.log(torch.rand(len(pool), generator=generator).clamp(1e-12, 1 - 1e-12)))
            keys = scores[pool] / config.temperature + gumbel  # Gumbel top-k: k draws without replacement
            items = pool[torch.topk(keys, k).indices]
        elif config.decoding == "quality":
            pool = torch.topk(scores, min(max(config.quality_from, k), allowed)).indices
            items = pool[torch.argsort(quality[pool], descending=True, stable=True)[:k]]
        else:
            items = torch.topk(scores, k).indices
        decisions.append(
            Decision(
                items=items.numpy(),
                chosen_length=candidates[int(best[user]) - row],
                lengths=list(candidates),
                max_returns=max_returns[span].numpy(),
                conditioned_returns=conditioned[span].numpy(),
            )
        )
        row += len(candidates)
    return decisions
