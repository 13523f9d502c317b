"""Token embeddings: items, states, and the residual MLPs that lift each token type into the backbone width."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Linear -> GELU -> Linear, plus a skip from the first Linear's output: (..., d_in) -> (..., d_out)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.first = nn.Linear(d_in, d_out)
        self.second = nn.Linear(d_out, d_out)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        return self.second(self.activation(hidden)) + hidden


def token_embedding(kind: str, d_in: int, d_out: int) -> nn.Module:
    """``mlp`` (MDT4Rec) or ``linear`` (the Decision Transformer ablation)."""
    return ResidualMLP(d_in, d_out) if kind == "mlp" else nn.Linear(d_in, d_out)


class StateEncoder(nn.Module):
    """A state = the last N items with their feedback -> one vector.

    ``forward(items (B, T, N, D), feedback (B, T, N), mask (B, T, N) bool) -> (B, T, D)``; oldest item first, mask
    false on padding. ``mean``: masked mean (zeros for an empty state); ``gru``: last hidden state of a GRU over the
    valid items; ``sasrec``: one causal self-attention block with learned positions, read at the last valid item.
    """

    def __init__(self, kind: str, dim: int, state_length: int):
        super().__init__()
        self.kind = kind
        self.mix = nn.Linear(dim + 1, dim)  # item vector and its feedback
        if kind == "gru":
            self.gru = nn.GRU(dim, dim, batch_first=True)
        elif kind == "sasrec":
            self.positions = nn.Embedding(state_length, dim)
            self.block = nn.TransformerEncoderLayer(
                dim, nhead=1, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )

    def forward(self, items: torch.Tensor, feedback: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, n, d = items.shape
        x = self.mix(torch.cat([items, feedback.unsqueeze(-1)], dim=-1)) * mask.unsqueeze(-1)
        if self.kind == "mean":
            return x.sum(2) / mask.sum(2, keepdim=True).clamp(min=1)
        x, valid = x.reshape(b * t, n, d), mask.reshape(b * t, n)
        count = valid.sum(1)
        last = (count - 1).clamp(min=0)
        if self.kind == "gru":
            hidden, _ = self.gru(x)  # causal: padding after the last valid item does not reach it
        else:
            x = x + self.positions.weight[:n]
            causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
            hidden = self.block(x, src_mask=causal)
        out = hidden[torch.arange(b * t, device=x.device), last] * (count > 0).unsqueeze(-1)
        return out.reshape(b, t, d)
