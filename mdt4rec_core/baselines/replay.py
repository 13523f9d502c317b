"""The behaviour policy of the logs: each simulated episode replays a logged user's actions in time order.

At its first step an episode draws a starting point uniformly over all logged actions (so a user is drawn in
proportion to the length of their log) and then recommends that user's actions one per step from there, wrapping
around at the end of the log. Where the mode forbids the next logged item, the episode skips ahead to the next item of
the same sequence that is allowed; if no item of the sequence is allowed, it recommends a uniformly random allowed item.

Episode identity. An ``Observation`` carries no episode id, and the live batch shrinks as episodes end, so a row's
position is no key. The replay state of an episode is instead keyed by what the episode has shown so far: (user,
initial item, items recommended so far). The state chosen at a call is filed under the key the episode will show at
the next call (its history plus the item just recommended). Episodes with the same key are indistinguishable, so each
key holds a list of states and every row takes one. Only the states filed at the latest call are kept; a row whose key
is unknown (e.g. the policy joins an episode under way) starts a new replay as if at its first step.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import polars as pl

from mdt4rec_core.baselines.logs import logged_sequences
from mdt4rec_core.envs.simulator import Observation

Key = tuple[int, int, tuple[int, ...]]


class LoggedReplayPolicy:
    """Replay of the logged actions of ``steps`` (TRAJECTORY_SCHEMA; actions are catalogue indices).

    Starting points and fallback items are drawn with the ``rng`` passed to ``act`` (the evaluation loop's, seeded per
    evaluation seed), so a run is reproducible from its evaluation seed alone, whatever ran before it.
    """

    def __init__(self, steps: pl.DataFrame):
        self.logs = logged_sequences(steps)
        self.states: dict[Key, list[tuple[int, int]]] = {}  # key -> [(user, position of the next item)]

    def act(self, observation: Observation, rng: np.random.Generator) -> np.ndarray:
        """(B,) items: each row's next logged item that ``observation.allowed`` permits."""
        previous, self.states = self.states, defaultdict(list)
        actions = np.empty(len(observation.users), dtype=np.int64)
        for row in range(len(actions)):
            key = _key(observation, row)
            waiting = previous.get(key)
            user, position = waiting.pop() if waiting else self._start(rng)
            allowed = None if observation.allowed is None else observation.allowed[row]
            actions[row], position = self._next(user, position, allowed, rng)
            self.states[(key[0], key[1], (*key[2], int(actions[row])))].append((user, position))
        return actions

    def _start(self, rng: np.random.Generator) -> tuple[int, int]:
        """A starting point drawn uniformly over all logged actions: (user, position in their sequence)."""
        flat = int(rng.integers(len(self.logs.items)))
        user = int(np.searchsorted(self.logs.offsets, flat, side="right")) - 1
        return user, flat - int(self.logs.offsets[user])

    def _next(self, user: int, position: int, allowed: np.ndarray | None, rng: np.random.Generator) -> tuple[int, int]:
        """The item to recommend and the position after it."""
        sequence = self.logs.sequence(user)
        if allowed is None:
            return int(sequence[position]), (position + 1) % len(sequence)
        ahead = np.roll(sequence, -position)  # the sequence from ``position`` on, wrapped
        permitted = np.flatnonzero(allowed[ahead])
        if len(permitted):
            skip = int(permitted[0])
            return int(ahead[skip]), (position + skip + 1) % len(sequence)
        return int(rng.choice(np.flatnonzero(allowed))), (position + 1) % len(sequence)


def _key(observation: Observation, row: int) -> Key:
    steps = int(observation.steps[row])
    history = tuple(int(item) for item in observation.history[row, :steps])
    return int(observation.users[row]), int(observation.initial_items[row]), history
