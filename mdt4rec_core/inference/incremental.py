"""Maximum in-support return search across the steps of episodes that advance together (the simulator loop), with
pass 1's keys and values kept from one step to the next.

Pass 1 runs each candidate with the "no target" token in every R slot, so its tokens do not depend on any decision:
the candidate that starts at step s holds s_s, R, a_s, ..., s_t at step t and, one step later, the same tokens plus
R, a_t, s_{t+1}. A key/value cache row is kept per (episode, start) for every start in the last K steps (with the
window full, the candidate starts t - K + 1 + m delta move with t, so each of them is a candidate at some step).
Each step appends its 3 new tokens to every row, and the start at t takes the row of the start that left the window
(its first token is s_t). Pass 1 then costs 3 new tokens per live start, about what plain DT spends re-encoding its
one window; pass 2, whose returns-to-go move with the target, runs the chosen candidate as ``search`` does
(``stitch``). The decisions equal ``search``'s (tested over whole episodes, GPT-2 and Llama backbones).

Layout (``SlotCache``): per block, keys and values of shape (slots * E, kv_heads, columns, head_dim), slot-major:
the start s lives in slot s mod K, rows slot * E + episode. Every row writes a step's tokens into the same 3
columns, so appending is an in-place write, and a start's row is valid from the column of its first token on. Rows
of episodes that ended stay until fewer than half the episodes live (then the rows are compacted); slots and
columns double when short (slots up to K), and the columns before every live start's first are dropped then.
"""

from __future__ import annotations

import numpy as np
import torch

from mdt4rec_core.config import SearchConfig
from mdt4rec_core.inference.search import Decision, EpisodeContext, candidate_lengths, search, stitch, windows
from mdt4rec_core.model.network import MDT4Rec
from mdt4rec_core.model.packing import TOKENS_PER_STEP
from mdt4rec_core.model.placement import inference_precision, model_device

INITIAL_COLUMNS = 4 * TOKENS_PER_STEP
"""Columns of a new cache (4 steps); they double as episodes grow."""


class SlotCache:
    """Keys and values of every block, written in place: a ``cache`` for a transformers decoder whose attention
    calls ``update(keys, values, layer_idx)`` and attends to what it returns. Buffers hold ``slots`` x ``episodes``
    rows (slot-major) and ``columns`` columns and are allocated at the first update. Before a call, ``rows`` (the
    first rows of the buffers take part) and ``at`` (the first column the call's tokens are written to) are set."""

    def __init__(self, slots: int, episodes: int, columns: int):
        self.slots, self.episodes, self.columns = slots, episodes, columns
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows, self.at = 0, 0

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, **_
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``keys``/``values`` (rows, kv_heads, q, head_dim) of the new tokens -> everything up to them."""
        if layer_idx == len(self.layers):
            shape = (self.slots * self.episodes, keys.shape[1], self.columns, keys.shape[3])
            self.layers.append((keys.new_zeros(shape), values.new_zeros(shape)))
        stored_keys, stored_values = self.layers[layer_idx]
        end = self.at + keys.shape[2]
        stored_keys[: self.rows, :, self.at : end] = keys
        stored_values[: self.rows, :, self.at : end] = values
        return stored_keys[: self.rows, :, :end], stored_values[: self.rows, :, :end]

    def keep_episodes(self, index: torch.Tensor) -> None:
        """Keep the rows of the episodes ``index`` (positions within a slot), in that order."""

        def keep(buffer: torch.Tensor) -> torch.Tensor:
            by_slot = buffer.reshape(self.slots, self.episodes, *buffer.shape[1:])
            return by_slot[:, index.to(buffer.device)].flatten(0, 1)

        self.layers = [(keep(keys), keep(values)) for keys, values in self.layers]
        self.episodes = len(index)

    def resize(self, slots: int, columns: int, drop_columns: int = 0) -> None:
        """Grow to ``slots`` slots and ``columns`` columns, the first ``drop_columns`` columns dropped."""
        kept = self.columns - drop_columns

        def resized(buffer: torch.Tensor) -> torch.Tensor:
            grown = buffer.new_zeros(slots * self.episodes, buffer.shape[1], columns, buffer.shape[3])
            grown[: buffer.shape[0], :, : min(kept, columns)] = buffer[:, :, drop_columns : drop_columns + columns]
            return grown

        self.layers = [(resized(keys), resized(values)) for keys, values in self.layers]
        self.slots, self.columns = slots, columns

    def megabytes(self) -> float:
        """What the buffers hold now."""
        return sum(keys.nbytes + values.nbytes for keys, values in self.layers) / 2**20

    def full_window_megabytes(self, slots: int, columns: int) -> float:
        """What the buffers would hold at ``slots`` slots and ``columns`` columns for the same episodes."""
        return self.megabytes() * (slots * columns) / (self.slots * self.columns)


class IncrementalSearch:
    """``search`` for the live episodes of a batch at one step, keeping pass 1's keys and values between calls.

    Call ``decide`` once per step with every live episode's context and its number (stable across steps). A call
    continues the kept caches when its episodes are a subset of the previous call's and are one step further;
    otherwise (a new batch of episodes, or a call after a gap) it rebuilds them from the histories. Contexts of
    unequal lengths, no search (``config.search`` off) or caches above ``config.reuse_megabytes`` are decided by
    ``search`` directly.
    """

    def __init__(self, model: MDT4Rec, config: SearchConfig):
        self.model, self.config = model, config
        self.slots = model.config.context_steps  # K: one slot per start in the window
        self.reset()

    def reset(self) -> None:
        self.episodes = np.zeros(0, dtype=np.int64)  # (E,) the episode of each row within a slot
        self.step = -1  # the step whose s_t is the last token written
        self.slot_start = np.full(self.slots, -1)  # the start each slot holds
        self.first_column = np.zeros(self.slots, dtype=np.int64)  # the column of the slot's first token
        self.columns = 0  # columns written so far
        self.cache: SlotCache | None = None

    @torch.no_grad()
    def decide(
        self, contexts: list[EpisodeContext], episodes: np.ndarray, seed: int = 0, uniforms: np.ndarray | None = None
    ) -> list[Decision]:
        """Decisions for ``contexts`` (one per episode of ``episodes`` (E,)), as ``search(model, contexts, config,
        uniforms, seed)`` makes them."""
        self.model.eval()
        with inference_precision(model_device(self.model), self.config.precision):
            return self._decide(contexts, np.asarray(episodes, dtype=np.int64), seed, uniforms)

    def _decide(self, contexts, episodes, seed, uniforms) -> list[Decision]:
        steps = {context.steps for context in contexts}
        if not self.config.search or len(steps) != 1 or self.config.reuse_megabytes == 0:
            self.reset()
            return search(self.model, contexts, self.config, uniforms, seed)
        t = steps.pop() - 1
        if t == self.step + 1 and t > 0 and np.isin(episodes, self.episodes).all():
            estimates = self._advance(contexts, episodes, t)
        else:
            self.reset()
            self.episodes = episodes
            for step in range(t + 1):  # rebuild from the histories, one step at a time
                estimates = self._advance([c.at(step) for c in contexts], episodes, step)
                full = self.cache.full_window_megabytes(self.slots, self._full_window_columns())
                if full > self.config.reuse_megabytes:
                    self.reset()
                    return search(self.model, contexts, self.config, uniforms, seed)
        lengths = [candidate_lengths(t + 1, self.slots, self.config.delta) for _ in contexts]
        if uniforms is None:
            uniforms = np.random.default_rng(seed).random(sum(len(w) for w in lengths))
        slots = torch.as_tensor([(t - w + 1) % self.slots for w in lengths[0]], device=estimates[0].device)
        max_returns, bin_logits = (value[:, slots].flatten(0, 1) for value in estimates)
        return stitch(self.model, contexts, lengths, max_returns, bin_logits, self.config, uniforms, seed)

    def _advance(
        self, contexts: list[EpisodeContext], episodes: np.ndarray, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write step t's tokens (R and a_{t-1}, then s_t; s_t alone for the start at t) into every used slot and
        return the estimates read at s_t for ``episodes``: max_return (E, S) and return_bin_logits (E, S, bins),
        S = K slots (unused slots hold garbage)."""
        model = self.model
        rows_of = self._rows_of(episodes)
        batch = windows(model, contexts, [min(2, t + 1)] * len(contexts), None, width=2)
        states, actions, time = model._step_parts(batch)  # (E, 2, H): steps t - 1 and t
        device, width = states.device, states.shape[-1]
        no_target = model._return_embedding(
            batch.returns_to_go[:, 0], torch.zeros(len(contexts), dtype=torch.bool, device=device)
        )
        live_tokens = model.norm(torch.stack([no_target + time[:, 0], actions[:, 0], states[:, 1]], dim=1))
        tokens = live_tokens.new_zeros(len(self.episodes), TOKENS_PER_STEP, width)
        tokens[torch.as_tensor(rows_of, device=device)] = live_tokens  # (E_kept, 3, H); ended episodes: zeros

        slot = t % self.slots
        self.slot_start[slot], self.first_column[slot] = t, self.columns + TOKENS_PER_STEP - 1
        used = min(t + 1, self.slots)  # slots 0 .. used - 1 hold starts
        self._make_room(len(self.episodes), used)
        kept = len(self.episodes)
        starts = torch.as_tensor(self.slot_start[:used], device=device)
        last = torch.arange(-(TOKENS_PER_STEP - 1), 1, device=device)
        positions = (TOKENS_PER_STEP * (t - starts)[:, None] + last).clamp(min=0)  # (used, 3)
        fresh = torch.zeros(used, TOKENS_PER_STEP, dtype=torch.bool, device=device)
        fresh[:, -1] = True
        fresh[:, :-1] = (starts < t)[:, None]  # R and a of step t - 1 belong to the starts before t
        column = torch.arange(self.columns, device=device)
        past = column[None, :] >= torch.as_tensor(self.first_column[:used], device=device)[:, None]  # (used, P)
        causal = torch.ones(TOKENS_PER_STEP, TOKENS_PER_STEP, dtype=torch.bool, device=device).tril()
        eye = torch.eye(TOKENS_PER_STEP, dtype=torch.bool, device=device)  # an invalid token attends to itself
        allowed = torch.cat(
            [past[:, None, :].expand(-1, TOKENS_PER_STEP, -1), (fresh[:, None, :] & causal) | eye], dim=-1
        )  # (used, 3, P + 3)
        mask = torch.zeros(allowed.shape, dtype=tokens.dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(tokens.dtype).min)
        rows = used * kept
        self.cache.rows, self.cache.at = rows, self.columns
        hidden = model.backbone.extend(
            tokens.unsqueeze(0).expand(used, -1, -1, -1).reshape(rows, TOKENS_PER_STEP, width),
            mask[:, None, None].expand(-1, kept, -1, -1, -1).reshape(rows, 1, TOKENS_PER_STEP, -1),
            positions[:, None].expand(-1, kept, -1).reshape(rows, TOKENS_PER_STEP),
            self.cache,
        )
        self.columns += TOKENS_PER_STEP
        self.step = t
        max_return, bin_logits = model.return_estimates(hidden[:, -1])
        order = torch.as_tensor(rows_of, device=device)
        full = max_return.new_zeros(self.slots, kept), bin_logits.new_zeros(self.slots, kept, bin_logits.shape[-1])
        full[0][:used], full[1][:used] = max_return.reshape(used, kept), bin_logits.reshape(used, kept, -1)
        return full[0][:, order].T, full[1][:, order].transpose(0, 1)

    def _rows_of(self, episodes: np.ndarray) -> np.ndarray:
        """Each episode's row within a slot; compacts the rows first when fewer than half of them are live."""
        order = {episode: row for row, episode in enumerate(self.episodes)}
        rows = np.array([order[e] for e in episodes], dtype=np.int64)
        if self.cache is not None and 2 * len(episodes) <= len(self.episodes):
            self.cache.keep_episodes(torch.as_tensor(rows))
            self.episodes = episodes
            rows = np.arange(len(episodes))
        return rows

    def _full_window_columns(self) -> int:
        """The columns the buffers double to for a full window (3 tokens per step, K + 1 steps)."""
        columns = INITIAL_COLUMNS
        while columns < TOKENS_PER_STEP * (self.slots + 1):
            columns *= 2
        return columns

    def _make_room(self, kept: int, used: int) -> None:
        """Make sure the buffers hold ``used`` slots and 3 more columns: double what is short (slots up to K), after
        dropping the columns no used slot reads any more."""
        if self.cache is None:
            self.cache = SlotCache(min(2, self.slots), kept, INITIAL_COLUMNS)
        cache = self.cache
        slots = cache.slots if used <= cache.slots else min(self.slots, 2 * cache.slots)
        drop, columns = 0, cache.columns
        if self.columns + TOKENS_PER_STEP > cache.columns:
            drop = int(self.first_column[:used].min())
            while self.columns - drop + TOKENS_PER_STEP > columns // 2:
                columns *= 2
        if (slots, columns, drop) != (cache.slots, cache.columns, 0):
            cache.resize(slots, columns, drop)
            self.columns -= drop
            self.first_column -= drop
