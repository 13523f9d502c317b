"""Simulators: quit rules on hand-computed cases, modes, metrics, the factorisation recipe, and episode cutting."""

import numpy as np
import pytest

from mdt4rec_core.config import FactorisationConfig
from mdt4rec_core.envs.evaluation import evaluate_in_simulator, mean_ci95, run_episodes
from mdt4rec_core.envs.ground_truth import factorise
from mdt4rec_core.envs.gym_env import RecommendationEnv
from mdt4rec_core.envs.policies import PopularityPolicy, RandomPolicy
from mdt4rec_core.envs.quit_rules import NEVER, NO_ITEM, DistanceQuit, RepeatQuit, cut_episodes, quit_lag
from mdt4rec_core.envs.simulator import BatchedEnv

# Five items on a line at positions 0, 1, 3, 6, 10: distance = |difference|.
POSITIONS = np.array([0.0, 1.0, 3.0, 6.0, 10.0])
DISTANCES = np.abs(POSITIONS[:, None] - POSITIONS[None, :]).astype(np.float32)
REWARDS = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)  # user u, item i -> 5u + i


def _history(*rows):
    width = max(len(r) for r in rows)
    return np.array([list(r) + [NO_ITEM] * (width - len(r)) for r in rows])


def test_distance_rule_by_hand():
    rule = DistanceQuit(DISTANCES, threshold=2.5, window=2)
    history = _history([0], [4, 3], [4, 3, 0], [], [2])
    new = np.array([0, 2, 1, 1, 3])
    # repeat of item 0 (distance 0); 2 vs {4: 7, 3: 3}; 1 vs {4, 3} only (0 is outside the window);
    # no history; 3 vs 2: 3.
    assert rule.quits(history, new).tolist() == [True, False, False, False, False]


def test_repeat_rules_by_hand():
    features = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    categories = RepeatQuit(features, window=3, max_occurrences=1)  # a category seen more than once before
    assert categories.quits(_history([0], [0, 1], [2, 3, 3, 0, 0]), np.array([1, 1, 1])).tolist() == [
        False,
        True,
        False,
    ]
    tags = RepeatQuit(features, window=2, max_occurrences=0)  # any tag seen before
    assert tags.quits(_history([2], [3, 3, 0], []), np.array([1, 0, 3])).tolist() == [True, False, False]


def test_repeated_item_always_quits_and_the_quitting_step_counts():
    env = BatchedEnv(REWARDS, DistanceQuit(DISTANCES, 0.5, 7), "FB")
    env.reset(np.array([1]), np.array([0]))
    rewards, done = env.step(np.array([2]))
    assert rewards.tolist() == [7.0] and not done[0]
    rewards, done = env.step(np.array([2]))
    assert done[0] and env.steps[0] == 2 and env.returns[0] == 14.0


def test_max_steps_caps_fb_episodes():
    env = BatchedEnv(REWARDS, DistanceQuit(DISTANCES, 0.0, 7), "FB")  # threshold 0: never quits
    env.reset(np.array([0]), np.array([0]))
    while env.live.any():
        env.step(np.array([1]))
    assert env.steps[0] == 30


def test_nx10_lasts_exactly_ten_steps_and_nx_never_repeats():
    rng = np.random.default_rng(0)
    n_items = 40
    rewards = rng.random((6, n_items)).astype(np.float32) * 5
    distances = np.zeros((n_items, n_items), dtype=np.float32)  # every pair "close": the quit rule always fires
    rule = DistanceQuit(distances, 1.0, 7)
    for mode, expected_length in (("NX_10", 10), ("NX_0", 2)):
        log = run_episodes(rewards, rule, mode, RandomPolicy(n_items), np.arange(6), episodes=50, seed=1)
        assert (log.lengths == expected_length).all()
        assert all(len(set(a.tolist())) == len(a) for a in log.actions)
    env = BatchedEnv(rewards, rule, "NX_10")
    env.reset(np.array([0]), np.array([0]))
    env.step(np.array([3]))
    with pytest.raises(ValueError, match="forbids recommending an item twice"):
        env.step(np.array([3]))


def test_r_avg_is_a_ratio_of_means():
    rule = DistanceQuit(DISTANCES, 2.5, 7)
    summary = evaluate_in_simulator(REWARDS, rule, "FB", RandomPolicy(5), np.arange(2), episodes=200, seeds=[0, 1])
    logs = [run_episodes(REWARDS, rule, "FB", RandomPolicy(5), np.arange(2), 200, s) for s in (0, 1)]
    returns = np.concatenate([log.returns for log in logs])
    lengths = np.concatenate([log.lengths for log in logs])
    assert summary["R_avg"] == pytest.approx(returns.mean() / lengths.mean())
    assert summary["R_avg"] != pytest.approx(np.mean(returns / lengths))
    assert (summary["R_cumu"], summary["R_cumu_ci95"]) == pytest.approx(mean_ci95(returns))


def test_popularity_policy_takes_the_most_popular_allowed_item():
    policy = PopularityPolicy(np.array([3, 9, 1, 9, 0]))
    env = BatchedEnv(REWARDS, DistanceQuit(DISTANCES, 0.0, 7), "NX_0")
    observation = env.reset(np.array([0, 1]), np.array([0, 0]))
    assert policy.act(observation, np.random.default_rng()).tolist() == [1, 1]
    env.step(np.array([1, 3]))
    assert policy.act(env.observe(), np.random.default_rng()).tolist() == [3, 1]


def test_gym_env_matches_the_batched_loop():
    rng = np.random.default_rng(3)
    rewards = rng.random((8, 12)).astype(np.float32) * 5
    distances = np.abs(rng.random(12)[:, None] - rng.random(12)[None, :]).astype(np.float32)
    rule = DistanceQuit(distances, 0.2, 3)
    env = RecommendationEnv(rewards, rule, "FB", np.arange(8))
    observation, _ = env.reset(seed=11)
    actions = [5, 2, 7, 7, 1, 0, 3]
    trace = []
    for action in actions:
        observation, reward, terminated, truncated, _ = env.step(action)
        trace.append((reward, terminated))
        if terminated:
            break
    batched = BatchedEnv(rewards, rule, "FB")
    batched.reset(np.array([observation["user"]]), np.array([observation["initial_item"]]))
    replay = []
    for action in actions[: len(trace)]:
        r, done = batched.step(np.array([action]))
        replay.append((float(r[0]), bool(done[0])))
    assert trace == replay and trace[-1][1]


def test_factorisation_recovers_a_low_rank_matrix():
    rng = np.random.default_rng(0)
    truth = rng.random((60, 2)) @ rng.random((2, 40)) * 2.5
    users, items = np.meshgrid(np.arange(60), np.arange(40), indexing="ij")
    observed = rng.random(truth.shape) < 0.6
    fit = factorise(
        users[observed],
        items[observed],
        truth[observed],
        60,
        40,
        FactorisationConfig(factors=2, epochs=60, batch_size=32, learning_rate=0.05, init_std=0.3),
    )
    assert fit.held_out_mse < 0.02 * truth.var() and fit.train_mse < 0.02 * truth.var()


def test_quit_lag_and_cutting_replay_the_environment():
    rule = DistanceQuit(DISTANCES, 2.5, 2)
    items = np.array([0, 4, 3, 1, 2, 4, 4, 0])
    new_user = np.array([True, False, False, False, False, True, False, False])
    lag = quit_lag(rule, items, new_user)
    # item 3 is close to nothing within 2; item 1 is close to 0 but 0 is 3 back; item 2 is 1 back from 1 (distance 2).
    assert lag.tolist() == [NEVER, NEVER, NEVER, NEVER, 1, NEVER, 1, NEVER]
    starts = cut_episodes(lag, new_user, max_steps=30)
    assert starts.tolist() == [True, False, False, False, False, True, False, True]
    # The same log through the environment: the user leaves at the same steps.
    env = BatchedEnv(REWARDS, rule, "FB")
    env.reset(np.array([0]), np.array([0]))
    for k, item in enumerate(items[:5]):
        _, done = env.step(np.array([item]))
        assert bool(done[0]) == (k == 4)
