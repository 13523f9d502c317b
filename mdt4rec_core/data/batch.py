"""The batch of trajectory windows the network reads: what ``windows`` collates and the model consumes.

Shapes: B windows, T steps per window, N items per state; I catalogue items (index I pads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrajectoryBatch:
    """One batch of windows. Padding steps have ``step_mask`` false; padding items use index ``items`` (I).

    ``state_items`` (B, T, N) long, ``state_feedback`` (B, T, N) float, ``state_mask`` (B, T, N) bool,
    ``returns_to_go`` (B, T) float, ``actions`` (B, T) long, ``timesteps`` (B, T) long, ``step_mask`` (B, T) bool,
    ``conditioned`` (B,) bool: the window's R tokens carry its returns-to-go (false: every R token is the learned
    "no target" token, the input the max-return and return-bin heads are read from at inference).
    """

    state_items: torch.Tensor
    state_feedback: torch.Tensor
    state_mask: torch.Tensor
    returns_to_go: torch.Tensor
    actions: torch.Tensor
    timesteps: torch.Tensor
    step_mask: torch.Tensor
    conditioned: torch.Tensor
