"""The MDT4Rec network: per step the tokens (state s_t, return-to-go R_t, action a_t), in that order, through a causal
LM backbone; action logits read from R_t, the max-return estimate and return-bin logits read from s_t.

Shapes: B windows, T steps per window (<= context_steps), N items per state, I catalogue items, H backbone width,
D item width (id embedding plus optional frozen text embedding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mdt4rec_core.model.backbone import Backbone
from mdt4rec_core.model.config import TOKENS_PER_STEP, ModelConfig
from mdt4rec_core.model.embeddings import ResidualMLP, StateEncoder, token_embedding
from mdt4rec_core.model.packing import pack_suffixes


@dataclass
class TrajectoryBatch:
    """One batch of windows. Padding steps have ``step_mask`` false; padding items use index ``items`` (I).

    ``state_items`` (B, T, N) long, ``state_feedback`` (B, T, N) float, ``state_mask`` (B, T, N) bool,
    ``returns_to_go`` (B, T) float, ``actions`` (B, T) long, ``timesteps`` (B, T) long, ``step_mask`` (B, T) bool.
    """

    state_items: torch.Tensor
    state_feedback: torch.Tensor
    state_mask: torch.Tensor
    returns_to_go: torch.Tensor
    actions: torch.Tensor
    timesteps: torch.Tensor
    step_mask: torch.Tensor


@dataclass
class ModelOutput:
    """``action_logits`` (B, T, I) from R_t; ``max_return`` (B, T) (in return units) and ``return_bin_logits``
    (B, T, bins) from s_t. Returns-to-go enter and the max-return head leaves the network scaled by
    ``config.max_return``, so both live in [0, 1]."""

    action_logits: torch.Tensor
    max_return: torch.Tensor
    return_bin_logits: torch.Tensor


@dataclass
class DecisionOutput:
    """Per candidate (C candidates, user by user): ``action_logits`` (C, I) read from R_t, ``max_return`` (C,) and
    ``return_bin_logits`` (C, bins) read from s_t, ``returns_to_go`` (C,) the value R_t was conditioned on."""

    action_logits: torch.Tensor
    max_return: torch.Tensor
    return_bin_logits: torch.Tensor
    returns_to_go: torch.Tensor


class MDT4Rec(nn.Module):
    def __init__(self, config: ModelConfig, item_text: torch.Tensor | None = None):
        """``item_text`` (I, text_dim): frozen text embeddings of the items when ``config.text_dim`` > 0 (left out
        when a checkpoint's weights, which hold them, are loaded next)."""
        super().__init__()
        self.config = config
        if item_text is not None and tuple(item_text.shape) != (config.items, config.text_dim):
            raise ValueError(f"item_text must have shape ({config.items}, {config.text_dim})")
        self.backbone = Backbone(config.backbone, max_positions=TOKENS_PER_STEP * config.context_steps)
        width, item_width = self.backbone.hidden_size, config.item_dim + config.text_dim
        self.item_ids = nn.Embedding(config.items + 1, config.item_dim, padding_idx=config.items)
        text = torch.zeros(config.items + 1, config.text_dim)  # the padding item's row stays zero
        if item_text is not None:
            text[: config.items] = item_text
        self.register_buffer("item_text", text)
        self.state_encoder = StateEncoder(config.state_encoder, item_width, config.state_length)
        self.embed_state = token_embedding(config.embedding, item_width, width)
        self.embed_return = token_embedding(config.embedding, 1, width)
        self.embed_action = token_embedding(config.embedding, item_width, width)
        self.embed_timestep = nn.Embedding(config.max_timestep + 1, width)
        self.norm = nn.LayerNorm(width)
        self.action_head = ResidualMLP(width, item_width)
        self.max_return_head = nn.Linear(width, 1)
        self.return_bin_head = nn.Linear(width, config.return_bins)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(...,) item indices (I = padding) -> (..., D)."""
        return torch.cat([self.item_ids(items), self.item_text[items]], dim=-1)

    def _tokens(self, batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, 3T, H) in the order s, R, a per step; token mask (B, 3T); position ids (B, 3T))."""
        b, t = batch.actions.shape
        states = self.state_encoder(self.item_vectors(batch.state_items), batch.state_feedback, batch.state_mask)
        time = self.embed_timestep(batch.timesteps.clamp(max=self.config.max_timestep))
        tokens = torch.stack(
            [
                self.embed_state(states) + time,
                self.embed_return((batch.returns_to_go / self.config.max_return).unsqueeze(-1)) + time,
                self.embed_action(self.item_vectors(batch.actions)) + time,
            ],
            dim=2,
        ).reshape(b, TOKENS_PER_STEP * t, -1)
        token_mask = batch.step_mask.repeat_interleave(TOKENS_PER_STEP, dim=1)
        # Explicit positions counted over real tokens only, so left padding does not shift them.
        positions = (token_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return self.norm(tokens), token_mask, positions

    def _catalogue(self, device: torch.device) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.config.items, device=device))

    def forward(self, batch: TrajectoryBatch, last_step_only: bool = False) -> ModelOutput:
        """Outputs for every step, or (``last_step_only``, T = 1 in the outputs) for the window's last step only:
        what a decision needs, without (B, T, I) logits."""
        b, t = batch.actions.shape
        tokens, token_mask, positions = self._tokens(batch)
        hidden = self.backbone(tokens, token_mask, positions).reshape(b, t, TOKENS_PER_STEP, -1)
        if last_step_only:
            hidden = hidden[:, -1:]
        state_hidden, return_hidden = hidden[:, :, 0], hidden[:, :, 1]
        return ModelOutput(
            action_logits=self.action_head(return_hidden) @ self._catalogue(batch.actions.device).T,
            max_return=self.max_return_head(state_hidden).squeeze(-1) * self.config.max_return,
            return_bin_logits=self.return_bin_head(state_hidden),
        )

    @torch.no_grad()
    def decide(
        self,
        batch: TrajectoryBatch,
        lengths: Sequence[Sequence[int]],
        condition=None,
        max_batch_tokens: int | None = None,
    ) -> DecisionOutput:
        """Outputs of every candidate history length of every user, all candidates in one batch per pass.

        ``batch`` holds one window per user, left-padded so that the decision step t is the last column;
        ``lengths[u]`` are user u's candidate lengths w (each keeps the last w steps). Pass 1 runs the packed
        candidates up to s_t (see ``packing``) and reads Rmax and the return bins there. The return-to-go of R_t is
        the running one, or ``condition(max_return (C,), bin_logits (C, bins)) -> (C,)``; pass 2 runs only the C
        R_t tokens against pass 1's key/value cache and reads the action logits. ``max_batch_tokens`` runs each pass
        over the packed rows in slices of at most that many tokens (bounded activation memory; None: one call).
        """
        b, t = batch.actions.shape
        tokens, _, _ = self._tokens(batch)
        width = tokens.shape[-1]
        device = tokens.device
        packed = pack_suffixes(lengths, t, tokens.dtype).to(device)
        prefix = tokens.reshape(b * TOKENS_PER_STEP * t, width)[packed.token_index]
        rows, columns = packed.positions.shape
        step = rows if max_batch_tokens is None else max(1, max_batch_tokens // columns)
        slices = [slice(start, start + step) for start in range(0, rows, step)]
        hidden, caches = [], []
        for part in slices:
            part_hidden, cache = self.backbone.extend(prefix[part], packed.prefix_mask[part], packed.positions[part])
            hidden.append(part_hidden)
            caches.append(cache)
        state_hidden = torch.cat(hidden).reshape(-1, width)[packed.state_slot]
        max_return = self.max_return_head(state_hidden).squeeze(-1) * self.config.max_return
        bin_logits = self.return_bin_head(state_hidden)
        per_user = torch.as_tensor([len(user) for user in lengths], device=device)
        if condition is None:
            target = batch.returns_to_go[:, -1].repeat_interleave(per_user)
        else:
            target = condition(max_return, bin_logits)
        time = self.embed_timestep(batch.timesteps[:, -1].clamp(max=self.config.max_timestep))
        return_tokens = self.norm(
            self.embed_return((target / self.config.max_return).unsqueeze(-1)) + time.repeat_interleave(per_user, 0)
        )
        queries = packed.query_positions.shape[1]
        query_tokens = return_tokens.new_zeros(rows * queries, width)
        query_tokens[packed.query_slot] = return_tokens
        query_tokens = query_tokens.reshape(rows, queries, width)
        return_hidden = [
            self.backbone.extend(query_tokens[part], packed.query_mask[part], packed.query_positions[part], cache)[0]
            for part, cache in zip(slices, caches, strict=True)
        ]
        action_hidden = torch.cat(return_hidden).reshape(-1, width)[packed.query_slot]
        return DecisionOutput(
            action_logits=self.action_head(action_hidden) @ self._catalogue(device).T,
            max_return=max_return,
            return_bin_logits=bin_logits,
            returns_to_go=target,
        )

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable_params": trainable, "total_params": total}
