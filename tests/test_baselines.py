"""Baseline policies: logged replay, SASRec and d3rlpy's DiscreteCQL/DiscreteBCQ on tiny synthetic logs."""

import datetime as dt
import functools
import math
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from mdt4rec_core.baselines.log_rule import LogRulePolicy, shrunk_mean_feedback
from mdt4rec_core.baselines.offline_rl import (
    OfflineRLConfig,
    QPolicy,
    load_offline_rl,
    logged_states,
    observation_states,
    save_offline_rl,
    state_vectors,
    train_offline_rl,
)
from mdt4rec_core.baselines.replay import LoggedReplayPolicy
from mdt4rec_core.baselines.sasrec import (
    SASRec,
    SASRecConfig,
    SASRecPolicy,
    held_out_cross_entropy,
    train_sasrec,
)
from mdt4rec_core.data.schema import TRAJECTORY_SCHEMA
from mdt4rec_core.envs.evaluation import evaluate_in_simulator
from mdt4rec_core.envs.quit_rules import DistanceQuit
from mdt4rec_core.envs.simulator import BatchedEnv, Observation
from mdt4rec_core.errors import InputError

ITEMS = 6  # items 4 and 5 never occur in the logs below
CYCLE = 4  # logged users walk 0 -> 1 -> 2 -> 3 -> 0 -> ...
NO_QUIT = DistanceQuit(np.ones((ITEMS, ITEMS), dtype=np.float32), threshold=0.0, window=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def steps_frame(users: dict[str, list[list[int]]], state_length: int = 10) -> pl.DataFrame:
    """A TRAJECTORY_SCHEMA frame: per user, episodes of actions in time order; feedback = action + 1 (raw, 1..6),
    reward = feedback / 6. Rows come out shuffled: consumers must sort them."""
    rows, clock = [], dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for user, episodes in users.items():
        for episode, actions in enumerate(episodes):
            rewards = [(a + 1) / ITEMS for a in actions]
            for step, action in enumerate(actions):
                clock += dt.timedelta(minutes=1)
                rows.append(
                    {
                        "user_id": user,
                        "episode": episode,
                        "step": step,
                        "timestamp": clock,
                        "state_items": actions[max(0, step - state_length) : step],
                        "state_feedback": rewards[max(0, step - state_length) : step],
                        "action": action,
                        "feedback": float(action + 1),
                        "reward": rewards[step],
                        "return_to_go": sum(rewards[step:]),
                        "done": step == len(actions) - 1,
                    }
                )
    return pl.DataFrame(rows, schema=TRAJECTORY_SCHEMA).sample(fraction=1.0, shuffle=True, seed=0)


def cycle_users(n: int, length: int, offset: int = 0) -> dict[str, list[list[int]]]:
    """``n`` users walking the cycle from different items, in episodes of 7 steps."""
    users = {}
    for u in range(n):
        walk = [(u + offset + k) % CYCLE for k in range(length)]
        users[f"user{u + offset}"] = [walk[k : k + 7] for k in range(0, length, 7)]
    return users


def observation(initial, histories, allowed=None) -> Observation:
    """Live episodes with the given initial items and recommendations so far (raw reward of item a: a + 1)."""
    b = len(initial)
    history = np.full((b, 30), -1, dtype=np.int64)
    history_rewards = np.zeros((b, 30), dtype=np.float32)
    for row, items in enumerate(histories):
        history[row, : len(items)] = items
        history_rewards[row, : len(items)] = [a + 1 for a in items]
    return Observation(
        users=np.zeros(b, dtype=np.int64),
        initial_items=np.asarray(initial, dtype=np.int64),
        history=history,
        history_rewards=history_rewards,
        steps=np.array([len(h) for h in histories], dtype=np.int64),
        allowed=allowed,
    )


def tiny_environment(seed: int = 0) -> tuple[np.ndarray, DistanceQuit]:
    rng = np.random.default_rng(seed)
    rewards = rng.uniform(0, 5, size=(3, ITEMS)).astype(np.float32)
    points = rng.normal(size=(ITEMS, 2))
    distances = np.linalg.norm(points[:, None] - points[None, :], axis=2).astype(np.float32)
    return rewards, DistanceQuit(distances, threshold=0.3, window=2)


def assert_runs_in_environments(policy) -> None:
    rewards, rule = tiny_environment()
    for mode in ("FB", "NX_0"):
        result = evaluate_in_simulator(rewards, rule, mode, policy, np.arange(3), episodes=6, seeds=[0, 1])
        assert result["episodes"] == 12
        assert 1 <= result["Length"] <= (30 if mode == "FB" else ITEMS)
        assert 0 <= result["R_cumu"] <= 5 * result["Length"] and math.isfinite(result["R_avg"])


# Logged replay


def wrapped_run(sequence: list[int], start: int, length: int) -> list[int]:
    return [sequence[(start + k) % len(sequence)] for k in range(length)]


def test_replay_recommends_a_users_logged_items_in_time_order():
    logs = {"a": [[0, 3], [2, 1, 5]], "b": [[4, 4, 1]]}  # a: 0 3 2 1 5 (episodes in order), b: 4 4 1
    policy = LoggedReplayPolicy(steps_frame(logs))
    sequences = [[0, 3, 2, 1, 5], [4, 4, 1]]
    env = BatchedEnv(np.zeros((1, ITEMS), dtype=np.float32), NO_QUIT, "FB")
    env.reset(np.zeros(20, dtype=np.int64), np.zeros(20, dtype=np.int64))
    rng = np.random.default_rng(0)
    for _ in range(8):
        env.step(policy.act(env.observe(), rng))
    starts = set()
    for actions in env.history[:, :8].tolist():
        matches = [
            (s, p) for s, seq in enumerate(sequences) for p in range(len(seq)) if wrapped_run(seq, p, 8) == actions
        ]
        assert matches, f"{actions} is no wrapped run of a logged sequence"
        starts.add(matches[0])
    assert len(starts) > 3  # starting points are drawn, not fixed


def test_replay_follows_each_episode_as_the_live_batch_shrinks():
    sequence = [0, 1, 0, 2, 3]  # item 0 twice: episodes with the same user, initial item and history occur
    policy = LoggedReplayPolicy(steps_frame({"a": [sequence]}))
    rng = np.random.default_rng(0)
    histories: list[list[int]] = [[] for _ in range(30)]
    live = list(range(30))
    for _ in range(8):
        actions = policy.act(observation([0] * len(live), [histories[e] for e in live]), rng)
        for episode, action in zip(live, actions, strict=True):
            histories[episode].append(int(action))
        live = [e for e in live if rng.random() < 0.8]  # some episodes end; the others move up in the batch
    assert len({tuple(h[:2]) for h in histories}) < 30  # identical keys did occur
    for actions in histories:
        assert any(wrapped_run(sequence, p, len(actions)) == actions for p in range(len(sequence))), actions


def test_replay_skips_forbidden_items_to_the_next_allowed_one_of_its_sequence():
    sequence = [0, 1, 0, 2, 3, 1]  # items 4 and 5 are never logged
    policy = LoggedReplayPolicy(steps_frame({"a": [sequence]}))
    env = BatchedEnv(np.zeros((1, ITEMS), dtype=np.float32), NO_QUIT, "NX_0")
    env.reset(np.zeros(10, dtype=np.int64), np.zeros(10, dtype=np.int64))
    rng = np.random.default_rng(0)
    while env.live.any():
        env.step(policy.act(env.observe(), rng))  # the environment rejects a repeat
    # The logged items in order of first occurrence from some starting point, then the others at random.
    expected = [list(dict.fromkeys(wrapped_run(sequence, start, len(sequence)))) for start in range(len(sequence))]
    assert env.steps.tolist() == [ITEMS] * 10  # every item, once
    for actions in env.history[:, :ITEMS].tolist():
        assert actions[:4] in expected
        assert sorted(actions[4:]) == [4, 5]


def test_replay_runs_in_the_environments():
    assert_runs_in_environments(LoggedReplayPolicy(steps_frame(cycle_users(3, 20))))


# The log rule

LINE = np.arange(ITEMS, dtype=np.float32)[:, None]  # item vectors on a line: the distance of items i, j is |i - j|


def _observation(initial: list[int], history: list[list[int]], allowed: np.ndarray | None = None) -> Observation:
    history_array = np.array(history, dtype=np.int64)
    return Observation(
        users=np.arange(len(initial)),
        initial_items=np.array(initial),
        history=history_array,
        history_rewards=np.zeros(history_array.shape),
        steps=(history_array >= 0).sum(axis=1),
        allowed=allowed,
    )


def test_the_log_rule_takes_the_best_item_far_enough_from_everything_acted_on():
    quality = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    rng = np.random.default_rng(0)
    observation = _observation([0, 5, 2], [[-1, -1], [2, -1], [0, 4]])
    assert LogRulePolicy(LINE, quality, min_distance=0.0).act(observation, rng).tolist() == [0, 0, 0]
    # Row 0 acted on item 0: items 0, 1 are too close. Row 1 on 5 and 2: 1..5 too close. Row 2 on 2, 0, 4: all.
    assert LogRulePolicy(LINE, quality, min_distance=2.0).act(observation, rng).tolist() == [2, 0, 0]
    allowed = np.ones((3, ITEMS), dtype=bool)
    allowed[:, 0] = False
    # Item 0 forbidden: rows 1 and 2 have no allowed item far enough and take the best allowed one.
    far_enough = LogRulePolicy(LINE, quality, min_distance=2.0).act(replace(observation, allowed=allowed), rng)
    assert far_enough.tolist() == [2, 1, 1]


def test_shrunk_mean_feedback_pulls_rarely_logged_items_to_the_global_mean():
    steps = steps_frame(cycle_users(4, 40))  # feedback = action + 1; items 4 and 5 never logged
    quality = shrunk_mean_feedback(steps, ITEMS, prior_weight=5.0)
    overall = steps["feedback"].mean()
    assert quality[4] == quality[5] == pytest.approx(overall)
    counts = np.bincount(steps["action"].to_numpy(), minlength=ITEMS)
    for item in range(CYCLE):
        assert quality[item] == pytest.approx((counts[item] * (item + 1) + 5.0 * overall) / (counts[item] + 5.0))


def test_the_log_rule_runs_in_the_environments():
    assert_runs_in_environments(LogRulePolicy(LINE, np.arange(ITEMS, dtype=float), min_distance=1.5))


# SASRec

SASREC = SASRecConfig(dim=16, layers=2, heads=2, max_length=12, dropout=0.0, batch_size=16, learning_rate=3e-3)


@pytest.fixture(scope="module")
def sasrec() -> SASRec:
    return train_sasrec(steps_frame(cycle_users(4, 40)), ITEMS, replace(SASREC, max_steps=150))


def test_sasrec_learns_a_deterministic_sequence(sasrec):
    held_out = steps_frame(cycle_users(2, 30, offset=5))
    assert held_out_cross_entropy(sasrec, held_out) < 0.05 * math.log(ITEMS)
    rng = np.random.default_rng(0)
    initial = rng.integers(CYCLE, size=40)
    lengths = rng.integers(0, 20, size=40)
    histories = [[(i + 1 + k) % CYCLE for k in range(n)] for i, n in zip(initial, lengths, strict=True)]
    predicted = SASRecPolicy(sasrec).act(observation(initial, histories), rng)
    expected = (initial + lengths + 1) % CYCLE
    assert (predicted == expected).mean() >= 0.95


def test_untrained_sasrec_is_near_uniform_and_training_is_deterministic():
    frame = steps_frame(cycle_users(4, 40))
    untrained = train_sasrec(frame, ITEMS, replace(SASREC, max_steps=0))
    assert abs(held_out_cross_entropy(untrained, frame) - math.log(ITEMS)) < 0.1
    config = replace(SASREC, max_steps=5, dropout=0.1)
    first, second = train_sasrec(frame, ITEMS, config), train_sasrec(frame, ITEMS, config)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_sasrec_save_load_round_trip(sasrec, tmp_path):
    sasrec.save(tmp_path / "sasrec")
    loaded = SASRec.load(tmp_path / "sasrec")
    sequences = torch.tensor([[0, 1, 2, ITEMS, ITEMS], [3, 0, 1, 2, 3]])
    assert loaded.config == sasrec.config and loaded.items == ITEMS
    assert torch.equal(loaded(sequences), sasrec(sequences))


def test_sasrec_policy_respects_allowed_and_samples_among_the_top_k(sasrec):
    allowed = np.ones((3, ITEMS), dtype=bool)
    allowed[:, 1] = False  # the true next item of every row below
    obs = observation([0, 3, 2], [[], [0], [3, 0]], allowed=allowed)
    logits = SASRecPolicy(sasrec).logits(obs).masked_fill(~torch.as_tensor(allowed), -torch.inf)
    argmax = SASRecPolicy(sasrec).act(obs, np.random.default_rng(0))
    assert allowed[np.arange(3), argmax].all() and argmax.tolist() == logits.argmax(dim=1).tolist()
    top2 = logits.topk(2, dim=1).indices.numpy()
    draws = np.stack([SASRecPolicy(sasrec, k_sample=2).act(obs, np.random.default_rng(s)) for s in range(30)])
    for row in range(3):
        assert set(draws[:, row]) <= set(top2[row])
    assert all(len(set(draws[:, row])) == 2 for row in range(3))  # both of the top two do get drawn


def test_sasrec_runs_in_the_environments(sasrec):
    assert_runs_in_environments(SASRecPolicy(sasrec))
    assert_runs_in_environments(SASRecPolicy(sasrec, k_sample=3))


# Offline RL (d3rlpy)


def test_logged_states_average_the_last_three_items_with_the_initial_item_first():
    frame = steps_frame({"a": [[5, 4, 3, 1], [2, 0]]})
    ordered, recent, previous = logged_states(frame)
    assert ordered["action"].to_list() == [5, 4, 3, 1, 2, 0]
    # Episode 0 has no initial item (the user's first); episode 1's is the user's previous action, 1.
    assert recent.tolist() == [[-1, -1, -1], [5, -1, -1], [4, 5, -1], [3, 4, 5], [1, -1, -1], [2, 1, -1]]
    assert np.allclose(previous, [0, 6 / 6, 5 / 6, 4 / 6, 0, 3 / 6])
    # The simulator's state of the same situation: initial item 1, then item 2 recommended (raw feedback 3 of 1..6).
    vectors = np.random.default_rng(0).normal(size=(ITEMS, 3)).astype(np.float32)
    online = observation_states(observation([1], [[2]]), vectors, feedback_min=0.0, feedback_max=6.0)
    assert np.allclose(online, state_vectors(recent[5:6], previous[5:6], vectors))
    assert np.allclose(online[0, :3], (vectors[2] + vectors[1]) / 2)
    with pytest.raises(InputError, match="state_length"):
        logged_states(steps_frame({"a": [[5, 4, 3, 1]]}, state_length=2))


@functools.cache
def trained(algorithm: str):
    """(algo, item vectors, config): 400 steps on the cycle logs (once per algorithm per test session)."""
    frame = steps_frame(cycle_users(4, 21))
    vectors = np.random.default_rng(1).normal(size=(ITEMS, 4)).astype(np.float32)
    config = OfflineRLConfig(
        algorithm=algorithm, steps=400, batch_size=16, learning_rate=1e-3, hidden_units=(16,), target_update_interval=10
    )
    return train_offline_rl(frame, vectors, config), vectors, config


@pytest.fixture(params=["cql", "bcq"])
def offline_rl(request):
    return trained(request.param)


def expected_choices(algo, config: OfflineRLConfig, states: torch.Tensor, allowed: np.ndarray):
    """The Q-argmax over the allowed items (for BCQ: those whose imitation probability is at least
    ``action_flexibility`` times the likeliest allowed one's), recomputed from the networks; and those candidates."""
    with torch.no_grad():
        q = algo.impl.q_function[0](states).q_value
        candidates = torch.tensor(allowed)
        if config.algorithm == "bcq":
            probabilities = torch.softmax(algo.impl.modules.imitator(states).logits, dim=1).masked_fill(~candidates, 0)
            candidates &= probabilities > config.action_flexibility * probabilities.max(dim=1, keepdim=True).values
    return q.masked_fill(~candidates, -torch.inf).argmax(dim=1).tolist(), candidates


def test_q_policy_picks_the_allowed_argmax_and_matches_d3rlpy_without_a_mask(offline_rl):
    algo, vectors, config = offline_rl
    policy = QPolicy(algo, vectors, feedback_min=0.0, feedback_max=6.0)
    histories = [[], [2], [1, 2], [3, 0, 1, 2, 3]]
    free = observation([0, 1, 0, 2], histories)
    states = torch.as_tensor(observation_states(free, vectors, 0.0, 6.0))
    actions = policy.act(free, np.random.default_rng(0))
    assert actions.shape == (4,) and actions.tolist() == algo.predict(states.numpy()).tolist()
    choices, candidates = expected_choices(algo, config, states, np.ones((4, ITEMS), dtype=bool))
    assert actions.tolist() == choices
    if config.algorithm == "bcq":
        assert (candidates.sum(dim=1) < ITEMS).any()  # the imitation filter does narrow the choice
    allowed = np.ones((4, ITEMS), dtype=bool)
    allowed[np.arange(4), actions] = False  # forbid the unmasked choice
    masked = policy.act(observation([0, 1, 0, 2], histories, allowed=allowed), np.random.default_rng(0))
    assert allowed[np.arange(4), masked].all()
    assert masked.tolist() == expected_choices(algo, config, states, allowed)[0]


def test_cql_learns_to_follow_the_logged_actions():
    algo, vectors, _ = trained("cql")
    ordered, recent, previous = logged_states(steps_frame(cycle_users(4, 21)))
    predicted = algo.predict(state_vectors(recent, previous, vectors))
    # The conservative term pulls Q towards the logged next item (step-0 states of first episodes carry no item).
    assert (predicted == ordered["action"].to_numpy()).mean() >= 0.85


def test_offline_rl_save_load_round_trip(offline_rl, tmp_path):
    algo, vectors, config = offline_rl
    save_offline_rl(tmp_path / "rl", algo, config, vectors)
    loaded, loaded_vectors, loaded_config = load_offline_rl(tmp_path / "rl")
    assert loaded_config == config and np.array_equal(loaded_vectors, vectors)
    obs = observation([0, 1, 2, 3, 4], [[], [3], [5, 0], [1, 2, 3], [0, 1, 2, 3, 4]])
    before = QPolicy(algo, vectors, 0.0, 6.0)
    after = QPolicy(loaded, loaded_vectors, 0.0, 6.0)
    assert torch.equal(before.scores(obs), after.scores(obs))
    assert after.act(obs, np.random.default_rng(0)).tolist() == before.act(obs, np.random.default_rng(0)).tolist()


def test_offline_rl_runs_in_the_environments(offline_rl):
    algo, vectors, _ = offline_rl
    assert_runs_in_environments(QPolicy(algo, vectors, feedback_min=0.0, feedback_max=5.0))


def test_offline_rl_config_rejects_unknown_algorithms():
    with pytest.raises(ValueError, match="unknown algorithm"):
        OfflineRLConfig(algorithm="dqn")


def test_offline_rl_training_is_reproducible_and_leaves_the_global_rngs_alone():
    frame = steps_frame(cycle_users(2, 14))
    vectors = np.random.default_rng(1).normal(size=(ITEMS, 4)).astype(np.float32)
    config = OfflineRLConfig(algorithm="cql", steps=5, batch_size=8, hidden_units=(8,))
    np.random.seed(7)
    torch.manual_seed(7)
    first = train_offline_rl(frame, vectors, config)
    after = np.random.random(), torch.rand(1).item()
    np.random.seed(7)
    torch.manual_seed(7)
    assert after == (np.random.random(), torch.rand(1).item())
    second = train_offline_rl(frame, vectors, config)
    for a, b in zip(first.impl.q_function.parameters(), second.impl.q_function.parameters(), strict=True):
        assert torch.equal(a, b)
