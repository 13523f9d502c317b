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

from mdt4rec_core.config import DataShape, ModelConfig
from mdt4rec_core.data.batch import TrajectoryBatch
from mdt4rec_core.model.backbone import Backbone
from mdt4rec_core.model.embeddings import ResidualMLP, StateEncoder, token_embedding
from mdt4rec_core.model.packing import TOKENS_PER_STEP, PackedSuffixes, pack_suffixes

DISTANCE_KNOTS = (0.5, 1.0, 1.5)
"""Knots of the piecewise-linear distance response, in units of the item factors' RMS norm (1)."""


def nearest_acted_distance(
    factors: torch.Tensor, state_items: torch.Tensor, state_mask: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """(..., I) distance of every item to the nearest item already acted on in the episode, in the item-factor space;
    0 where nothing was acted on yet.

    ``factors`` (I + 1, F) (the last row: padding); ``state_items`` / ``state_mask`` (..., N) and ``timesteps`` (...)
    of the step's state. The state's oldest item is the episode's initial item exactly when the state holds
    timestep + 1 items: it was not acted on, so it does not count. One matmul of augmented vectors gives every squared
    distance, ||c||^2 + ||r||^2 - 2 c.r, with slots not acted on pushed out of reach.
    """
    catalogue = factors[:-1]
    acted = state_mask.clone()
    acted[..., 0] &= state_mask.sum(-1) != timesteps + 1
    recent = factors[state_items]  # (..., N, F)
    unreachable = torch.where(acted, 0.0, torch.finfo(factors.dtype).max / 4).unsqueeze(-1)
    recent = torch.cat(
        [-2 * recent, torch.ones_like(unreachable), recent.square().sum(-1, keepdim=True) + unreachable], -1
    )
    columns = torch.cat([catalogue, catalogue.square().sum(-1, keepdim=True), torch.ones_like(catalogue[:, :1])], -1)
    nearest = (recent @ columns.T).amin(dim=-2).clamp(min=0).sqrt()  # (..., I)
    return torch.where(acted.any(-1, keepdim=True), nearest, 0.0)


@dataclass
class ModelOutput:
    """``action_logits`` (B, T, I) from R_t; ``max_return`` (B, T) (in return units) and ``return_bin_logits``
    (B, T, bins) from s_t. Returns-to-go enter and the max-return head leaves the network scaled by
    ``shape.max_return``, so both live in [0, 1]."""

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
    def __init__(
        self,
        config: ModelConfig,
        shape: DataShape,
        item_text: torch.Tensor | None = None,
        item_factors: torch.Tensor | None = None,
        item_quality: torch.Tensor | None = None,
    ):
        """``config`` the hyper-parameters, ``shape`` the sizes taken from the data. ``item_text`` (I, text_dim):
        frozen text embeddings of the items when ``config.text_dim`` > 0; ``item_factors`` (I, factor_dim): frozen
        item vectors factorised from the training logs when ``shape.factor_dim`` > 0; ``item_quality`` (I,): each
        item's shrunk mean reward in the training logs (what ``decoding: quality`` orders by). All are left out when
        a checkpoint's weights, which hold them, are loaded next."""
        super().__init__()
        self.config, self.shape = config, shape
        frozen = (("item_text", item_text, config.text_dim), ("item_factors", item_factors, shape.factor_dim))
        for name, given, dim in frozen:
            if given is not None and tuple(given.shape) != (shape.items, dim):
                raise ValueError(f"{name} must have shape ({shape.items}, {dim})")
            table = torch.zeros(shape.items + 1, dim)  # the padding item's row stays zero
            if given is not None:
                table[: shape.items] = given
            self.register_buffer(name, table)
        if item_quality is not None and tuple(item_quality.shape) != (shape.items,):
            raise ValueError(f"item_quality must have shape ({shape.items},)")
        self.register_buffer("item_quality", torch.zeros(shape.items) if item_quality is None else item_quality.float())
        self.backbone = Backbone(config.backbone, max_positions=TOKENS_PER_STEP * config.context_steps)
        width, item_width = self.backbone.hidden_size, config.item_dim + config.text_dim + shape.factor_dim
        self.item_ids = nn.Embedding(shape.items + 1, config.item_dim, padding_idx=shape.items)
        nn.init.normal_(self.item_ids.weight, std=0.02)
        with torch.no_grad():
            self.item_ids.weight[shape.items].zero_()
        self.item_bias = nn.Parameter(torch.zeros(shape.items))
        self.state_encoder = StateEncoder(config.state_encoder, item_width, shape.state_length)
        self.embed_state = token_embedding(config.embedding, item_width, width)
        self.embed_return = token_embedding(config.embedding, 1, width)
        self.no_return = nn.Parameter(torch.randn(width) * 0.02)
        self.embed_action = token_embedding(config.embedding, item_width, width)
        self.embed_timestep = nn.Embedding(shape.max_timestep + 1, width)
        self.norm = nn.LayerNorm(width)
        self.action_head = ResidualMLP(width, item_width)
        if config.distance_head and shape.factor_dim:
            # Per R_t: weights of the piecewise-linear response to an item's distance from what was acted on.
            self.distance_weights = nn.Linear(width, 1 + len(DISTANCE_KNOTS))
            nn.init.zeros_(self.distance_weights.weight)
            nn.init.zeros_(self.distance_weights.bias)
        self.max_return_head = nn.Linear(width, 1)
        self.return_bin_head = nn.Linear(width, config.return_bins)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(...,) item indices (I = padding) -> (..., D): learned id embedding, text and log factors."""
        return torch.cat([self.item_ids(items), self.item_text[items], self.item_factors[items]], dim=-1)

    def _step_parts(self, batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per step, before the LayerNorm: state tokens (B, T, H), action tokens (B, T, H) and the timestep
        embedding (B, T, H) that R tokens add to their own."""
        states = self.state_encoder(self.item_vectors(batch.state_items), batch.state_feedback, batch.state_mask)
        time = self.embed_timestep(batch.timesteps.clamp(max=self.shape.max_timestep))
        return self.embed_state(states) + time, self.embed_action(self.item_vectors(batch.actions)) + time, time

    def _return_embedding(self, returns: torch.Tensor, conditioned: torch.Tensor) -> torch.Tensor:
        """(...,) returns-to-go and (...,) bool -> (..., H): the embedded return, or the "no target" token."""
        embedded = self.embed_return((returns / self.shape.max_return).unsqueeze(-1))
        return torch.where(conditioned.unsqueeze(-1), embedded, self.no_return.to(embedded.dtype))

    def _tokens(self, batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, 3T, H) in the order s, R, a per step; token mask (B, 3T); position ids (B, 3T))."""
        b, t = batch.actions.shape
        states, actions, time = self._step_parts(batch)
        returns = self._return_embedding(batch.returns_to_go, batch.conditioned[:, None].expand(b, t)) + time
        tokens = torch.stack([states, returns, actions], dim=2).reshape(b, TOKENS_PER_STEP * t, -1)
        token_mask = batch.step_mask.repeat_interleave(TOKENS_PER_STEP, dim=1)
        # Explicit positions counted over real tokens only, so left padding does not shift them.
        positions = (token_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return self.norm(tokens), token_mask, positions

    def _catalogue(self, device: torch.device) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.shape.items, device=device))

    def _action_logits(self, return_hidden: torch.Tensor, distance: torch.Tensor | None) -> torch.Tensor:
        """(..., H) hidden states of R tokens -> (..., I) scores of every catalogue item: similarity to the head's
        output, item bias, and (``distance_head``) a piecewise-linear response to ``distance`` (..., I), the item's
        distance from the items acted on (``nearest_acted_distance``), with weights read from R_t."""
        logits = self.action_head(return_hidden) @ self._catalogue(return_hidden.device).T + self.item_bias
        if distance is None:
            return logits
        weights = self.distance_weights(return_hidden).unsqueeze(-2)  # (..., 1, 1 + knots)
        logits = logits + weights[..., 0] * distance
        for k, knot in enumerate(DISTANCE_KNOTS, start=1):
            logits = logits + weights[..., k] * torch.relu(distance - knot)
        return logits

    def _acted_distance(self, state_items, state_mask, timesteps) -> torch.Tensor | None:
        """``nearest_acted_distance`` of the given states when the distance head is on (no gradient flows)."""
        if not hasattr(self, "distance_weights"):
            return None
        with torch.no_grad(), torch.autocast(self.item_factors.device.type, enabled=False):
            # fp32 even under bf16 autocast: distances differ by ~0.1 in bf16, a fifth of a knot interval
            return nearest_acted_distance(self.item_factors.float(), state_items, state_mask, timesteps)

    def forward(self, batch: TrajectoryBatch, last_step_only: bool = False) -> ModelOutput:
        """Outputs for every step, or (``last_step_only``, T = 1 in the outputs) for the window's last step only:
        what a decision needs. Action logits are computed at the real steps only (``step_mask``; short windows are
        mostly padding) and are 0 at padding steps."""
        b, t = batch.actions.shape
        tokens, token_mask, positions = self._tokens(batch)
        hidden = self.backbone(tokens, token_mask, positions).reshape(b, t, TOKENS_PER_STEP, -1)
        steps = slice(-1, None) if last_step_only else slice(None)
        state_hidden, return_hidden = hidden[:, steps, 0], hidden[:, steps, 1]
        real = batch.step_mask[:, steps]
        distance = self._acted_distance(
            batch.state_items[:, steps][real], batch.state_mask[:, steps][real], batch.timesteps[:, steps][real]
        )
        logits = self._action_logits(return_hidden[real], distance)
        action_logits = logits.new_zeros(*real.shape, self.shape.items)
        action_logits[real] = logits
        max_return, bin_logits = self.return_estimates(state_hidden)
        return ModelOutput(action_logits=action_logits, max_return=max_return, return_bin_logits=bin_logits)

    def _packed_hidden(
        self, batch: TrajectoryBatch, lengths: Sequence[Sequence[int]], conditioned: bool, max_batch_tokens: int | None
    ) -> tuple[torch.Tensor, PackedSuffixes]:
        """Hidden states (R * L, H) of every candidate history length of every user, packed into R rows of L tokens.

        ``batch`` holds one window per user, left-padded so that the decision step t is the last column;
        ``lengths[u]`` are user u's candidate lengths w (each keeps the last w steps). The R slots hold the batch's
        returns-to-go (``conditioned``) or the "no target" token. ``max_batch_tokens`` runs the packed rows in slices
        of at most that many tokens (bounded activation memory; None: one call)."""
        b, t = batch.actions.shape
        states, actions, time = self._step_parts(batch)
        width, device = states.shape[-1], states.device
        packed = pack_suffixes(lengths, t, states.dtype).to(device)
        flat = packed.token_index
        step_index = flat // TOKENS_PER_STEP  # user * t + step
        is_return = (flat % TOKENS_PER_STEP == 1).unsqueeze(-1)
        other = torch.stack([states, torch.zeros_like(states), actions], dim=2).reshape(-1, width)[flat]
        returns = batch.returns_to_go.reshape(-1)[step_index]  # (R, L)
        flags = torch.full(returns.shape, conditioned, device=device)
        embedded = self._return_embedding(returns, flags) + time.reshape(-1, width)[step_index]
        tokens = self.norm(torch.where(is_return, embedded, other))
        rows, columns = flat.shape
        step = rows if max_batch_tokens is None else max(1, max_batch_tokens // columns)
        hidden = [
            self.backbone.packed(tokens[p], packed.mask[p], packed.positions[p])
            for p in (slice(start, start + step) for start in range(0, rows, step))
        ]
        return torch.cat(hidden).reshape(-1, width), packed

    def return_estimates(self, state_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., H) hidden states of s_t -> max-return estimate (...,) in return units, return-bin logits
        (..., bins)."""
        max_return = self.max_return_head(state_hidden).squeeze(-1) * self.shape.max_return
        return max_return, self.return_bin_head(state_hidden)

    @torch.no_grad()
    def candidate_estimates(
        self, batch: TrajectoryBatch, lengths: Sequence[Sequence[int]], max_batch_tokens: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass 1 of the search: every candidate (see ``_packed_hidden``) with the "no target" token in every R slot;
        (max_return (C,), return_bin_logits (C, bins)) read at s_t, candidates numbered user by user."""
        hidden, packed = self._packed_hidden(batch, lengths, False, max_batch_tokens)
        return self.return_estimates(hidden[packed.state_slot])

    @torch.no_grad()
    def decide(
        self, batch: TrajectoryBatch, lengths: Sequence[Sequence[int]], max_batch_tokens: int | None = None
    ) -> DecisionOutput:
        """Pass 2 (and the no-search decision): every candidate conditioned on the batch's returns-to-go (for pass 2,
        the whole sequence shifted to end at the target: R_k = target + rewards collected from step k to t - 1, as
        training windows have it); action logits read at R_t, estimates at s_t."""
        hidden, packed = self._packed_hidden(batch, lengths, True, max_batch_tokens)
        max_return, bin_logits = self.return_estimates(hidden[packed.state_slot])
        per_user = torch.as_tensor([len(user) for user in lengths], device=hidden.device)
        distance = self._acted_distance(batch.state_items[:, -1], batch.state_mask[:, -1], batch.timesteps[:, -1])
        if distance is not None:
            distance = distance.repeat_interleave(per_user, dim=0)  # every candidate of a user shares its state
        return DecisionOutput(
            action_logits=self._action_logits(hidden[packed.return_slot], distance),
            max_return=max_return,
            return_bin_logits=bin_logits,
            returns_to_go=batch.returns_to_go[:, -1].repeat_interleave(per_user),
        )

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable_params": trainable, "total_params": total}
