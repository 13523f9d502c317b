"""The MDT4Rec network: per step the tokens (state s_t, return-to-go R_t, action a_t), in that order, through a causal
LM backbone; action logits read from R_t, the max-return estimate and return-bin logits read from s_t.

Shapes: B windows, T steps per window (<= context_steps), N items per state, I catalogue items, H backbone width,
D item width (id embedding plus optional frozen text embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mdt4rec_core.model.backbone import Backbone
from mdt4rec_core.model.config import ModelConfig
from mdt4rec_core.model.embeddings import ResidualMLP, StateEncoder, token_embedding

TOKENS_PER_STEP = 3


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
        self, batch: TrajectoryBatch, condition=None
    ) -> tuple[ModelOutput, torch.Tensor | None, torch.Tensor | None]:
        """Decision outputs at each window's last step t (windows left-padded, so t is the last column).

        Pass 1 reads Rmax and the return bins at s_t and the action logits at R_t under the running return-to-go.
        With ``condition`` (a function (max_return (B,), bin_logits (B, bins)) -> return-to-go (B,)), pass 2 re-reads
        the action logits at R_t conditioned on that value, reusing the prefix up to s_t from a key/value cache: only
        one token per row runs again. Returns (pass-1 outputs with T = 1, pass-2 action logits (B, I) or None, the
        return-to-go used in pass 2 or None).
        """
        tokens, token_mask, positions = self._tokens(batch)
        prefix = tokens.shape[1] - 2  # up to and including s_t
        hidden, cache = self.backbone.extend(tokens[:, :prefix], token_mask[:, :prefix], positions[:, :prefix])
        state_hidden = hidden[:, -1]
        max_return = self.max_return_head(state_hidden).squeeze(-1) * self.config.max_return
        bin_logits = self.return_bin_head(state_hidden)
        catalogue = self._catalogue(batch.actions.device)
        r_mask, r_position = token_mask[:, : prefix + 1], positions[:, prefix : prefix + 1]
        return_hidden, cache = self.backbone.extend(tokens[:, prefix : prefix + 1], r_mask, r_position, cache)
        first = ModelOutput(
            action_logits=(self.action_head(return_hidden[:, 0]) @ catalogue.T).unsqueeze(1),
            max_return=max_return.unsqueeze(1),
            return_bin_logits=bin_logits.unsqueeze(1),
        )
        if condition is None:
            return first, None, None
        conditioned = condition(max_return, bin_logits)
        cache.crop(-1)  # forget the running R_t: the cache holds the prefix up to s_t again
        time = self.embed_timestep(batch.timesteps[:, -1].clamp(max=self.config.max_timestep))
        token = self.norm(self.embed_return((conditioned / self.config.max_return).unsqueeze(-1)) + time)
        return_hidden, _ = self.backbone.extend(token.unsqueeze(1), r_mask, r_position, cache)
        return first, self.action_head(return_hidden[:, 0]) @ catalogue.T, conditioned

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable_params": trainable, "total_params": total}
