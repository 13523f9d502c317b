"""Packing of suffix windows for the maximum in-support return search.

Every candidate history length w of a user keeps the last w steps of that user's window, so a candidate's tokens are a
suffix of the window's tokens: s, R, a per step, ending at R_t (3w - 1 tokens). The candidates are packed into rows
with little padding (best fit, longest first, across users) and a block-diagonal causal mask keeps each candidate to
its own tokens, with positions counted from 0 inside each candidate, so every candidate computes exactly what it
would alone. Both search passes run the same packing; they differ only in the return-to-go tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TOKENS_PER_STEP = 3
"""Tokens per trajectory step: state s_t, return-to-go R_t, action a_t, in that order."""


_PADDING = -1


@dataclass
class PackedSuffixes:
    """C candidates packed into R rows of L tokens.

    ``token_index`` (R, L) long: index into the flattened window tokens (B * 3T, H) (0 for padding);
    ``candidate`` (R, L) long: the candidate each token belongs to (0 for padding);
    ``positions`` (R, L) long; ``mask`` (R, 1, L, L) additive float mask;
    ``state_slot`` / ``return_slot`` (C,) long: flat index row * L + column of each candidate's s_t / R_t.
    Candidates are numbered user by user, in the order of ``lengths``.
    """

    token_index: torch.Tensor
    candidate: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    state_slot: torch.Tensor
    return_slot: torch.Tensor

    def to(self, device: torch.device) -> PackedSuffixes:
        return PackedSuffixes(*(value.to(device) for value in vars(self).values()))


def _best_fit_rows(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: candidate numbers (indices into ``sizes``) per row, no row over ``capacity`` tokens. Each
    candidate, longest first, goes to the row with the least room that still holds it."""
    rows: list[list[int]] = []
    rows_by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # room left -> rows with exactly that room
    for candidate in sorted(range(len(sizes)), key=lambda c: -sizes[c]):
        size = sizes[candidate]
        room = next((r for r in range(size, capacity + 1) if rows_by_room[r]), None)
        if room is None:
            rows.append([])
            row, room = len(rows) - 1, capacity
        else:
            row = rows_by_room[room].pop()
        rows[row].append(candidate)
        rows_by_room[room - size].append(row)
    return rows


def pack_suffixes(lengths: Sequence[Sequence[int]], window_steps: int, dtype: torch.dtype) -> PackedSuffixes:
    """``lengths[u]`` the candidate history lengths of user u (each <= ``window_steps``; windows left-padded to
    ``window_steps`` steps, so the decision step is the last)."""
    tokens_per_user = TOKENS_PER_STEP * window_steps
    sizes = [[TOKENS_PER_STEP * w - 1 for w in user] for user in lengths]
    capacity = max(size for user in sizes for size in user)
    owners = [(user, c) for user, user_sizes in enumerate(sizes) for c in range(len(user_sizes))]
    layout = [[owners[n] for n in row] for row in _best_fit_rows([size for user in sizes for size in user], capacity)]
    offsets = np.concatenate([[0], np.cumsum([len(user) for user in lengths])])
    rows, width = len(layout), capacity
    token_index = np.zeros((rows, width), dtype=np.int64)
    candidate_of = np.zeros((rows, width), dtype=np.int64)
    positions = np.zeros((rows, width), dtype=np.int64)
    segment = np.full((rows, width), _PADDING, dtype=np.int64)
    return_slot = np.zeros(offsets[-1], dtype=np.int64)
    for row, members in enumerate(layout):
        column = 0
        for slot, (user, candidate) in enumerate(members):
            size = sizes[user][candidate]
            first = user * tokens_per_user + tokens_per_user - 1 - size  # the window ends with s_t, R_t, a_t
            number = offsets[user] + candidate
            token_index[row, column : column + size] = np.arange(first, first + size)
            candidate_of[row, column : column + size] = number
            positions[row, column : column + size] = np.arange(size)
            segment[row, column : column + size] = slot
            return_slot[number] = row * width + column + size - 1
            column += size
    segment_t = torch.as_tensor(segment)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segment_t[:, :, None] == segment_t[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)
    return PackedSuffixes(
        token_index=torch.as_tensor(token_index),
        candidate=torch.as_tensor(candidate_of),
        positions=torch.as_tensor(positions),
        mask=mask,
        state_slot=torch.as_tensor(return_slot - 1),
        return_slot=torch.as_tensor(return_slot),
    )
