"""What the model learns from: quit-aware episodes, windows that start anywhere, training and inference building the
same tokens, expert conditioning on normalised returns, and item vectors factorised from the logs only."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from mdt4rec_core.config import BackboneConfig, DataShape, ModelConfig, SearchConfig, TrajectoryConfig
from mdt4rec_core.data.item_factors import factorise_items
from mdt4rec_core.data.trajectories import trajectories_in_memory
from mdt4rec_core.data.windows import collate, episode_arrays, sample_windows
from mdt4rec_core.envs.episodes import QuitRuleEpisodes
from mdt4rec_core.envs.quit_rules import NO_ITEM, DistanceQuit
from mdt4rec_core.inference.recommend import context_from_history
from mdt4rec_core.inference.search import _conditioning, windows
from mdt4rec_core.model.network import MDT4Rec

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
ITEMS = 12
# Items on a line at 0, 1, 2, ...: two items closer than 2.5 are "close".
DISTANCES = np.abs(np.arange(ITEMS)[:, None] - np.arange(ITEMS)[None, :]).astype(np.float32)
RULE = DistanceQuit(DISTANCES, 2.5, 3)


def _logs(seed=0, users=6, per_user=25):
    rng = np.random.default_rng(seed)
    rows = [
        (f"u{u}", f"i{rng.integers(ITEMS):02d}", T0 + dt.timedelta(minutes=k), float(rng.integers(1, 6)))
        for u in range(users)
        for k in range(per_user)
    ]
    schema = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Datetime("us", "UTC"), "feedback": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


CONFIG = TrajectoryConfig(state_length=4, max_episode_steps=30)


def _quit_aware(events, config=CONFIG):
    # The catalogue sorts ids, so "iNN" gets index NN: the rule's item indices are the catalogue's.
    return trajectories_in_memory(events, config, QuitRuleEpisodes(RULE, config.max_episode_steps, "line"))


def test_quit_aware_episodes_never_continue_past_a_step_where_the_rule_fires():
    steps = _quit_aware(_logs()).steps.sort("user_id", "episode", "step")
    assert steps["done"].sum() > 12  # the rule cut the logs into many episodes
    for _, episode in steps.group_by("user_id", "episode"):
        actions = episode.sort("step")["action"].to_list()
        fired = [
            bool(
                RULE.quits(
                    np.array([([*actions[:k][::-1][: RULE.window]] + [NO_ITEM] * RULE.window)[: RULE.window]]),
                    np.array([actions[k]]),
                )[0]
            )
            for k in range(len(actions))
        ]
        assert not any(fired[:-1])  # the episode goes on only while the rule stays quiet
        if len(actions) < 30 and not episode["done"].is_empty():
            last_of_user = (
                episode["episode"][0] == steps.filter(pl.col("user_id") == episode["user_id"][0])["episode"].max()
            )
            assert fired[-1] or last_of_user  # it ends where a simulated user leaves (or where the log ends)


def test_window_starts_cover_every_step():
    trajectories = _quit_aware(_logs(per_user=60), TrajectoryConfig(state_length=4, max_episode_steps=8))
    arrays = episode_arrays(trajectories.steps, 4, ITEMS)
    long = np.flatnonzero(arrays.lengths == arrays.lengths.max())[:1]
    batch = sample_windows(arrays, long, 4000, 20, np.random.default_rng(0))
    first = batch.timesteps[torch.arange(len(batch.timesteps)), batch.step_mask.float().argmax(dim=1)]
    assert set(first.tolist()) == set(range(int(arrays.lengths[long[0]])))  # windows start at every step
    assert set(batch.step_mask.sum(1).tolist()) == set(range(1, int(arrays.lengths[long[0]]) + 1))


def test_training_and_inference_build_identical_tokens_for_the_same_history():
    trajectories = _quit_aware(_logs(per_user=60))
    steps = trajectories.steps.sort("user_id", "episode", "step")
    arrays = episode_arrays(steps, 4, ITEMS)
    # A later episode of a user (it has an initial item), with at least 3 steps.
    episode = next(
        e for e in range(len(arrays.starts)) if arrays.lengths[e] >= 3 and steps["episode"][int(arrays.starts[e])] > 0
    )
    start, t = int(arrays.starts[episode]), int(arrays.lengths[episode]) - 1
    training = collate(arrays, np.array([episode]), np.array([t]), 5, "left")
    initial_item = int(steps["action"][start - 1])  # the item that ended the user's previous episode
    actions, rewards = arrays.actions[start : start + t], steps["reward"].to_numpy()[start : start + t]
    context = context_from_history(
        actions, rewards, ITEMS, 4, initial_return=100.0, exclude_seen=False, initial_item=initial_item
    )
    model = MDT4Rec(
        ModelConfig(context_steps=5, item_dim=8, backbone=BackboneConfig(kind="tiny-gpt2", lora_dropout=0.0)),
        DataShape(items=ITEMS, state_length=4, max_timestep=30, max_return=10.0),
    ).eval()
    inference = windows(model, [context], [t + 1], np.array([arrays.returns_to_go[start + t]]))
    for name in ("state_items", "state_feedback", "state_mask", "timesteps", "step_mask", "conditioned"):
        assert torch.equal(getattr(training, name), getattr(inference, name)), name
    # Conditioned on the episode's return-to-go at t, inference rebuilds every earlier return-to-go of the window.
    assert torch.allclose(training.returns_to_go, inference.returns_to_go, atol=1e-5)
    assert torch.equal(training.actions[:, :-1], inference.actions[:, :-1])  # a_t is what inference decides
    with torch.no_grad():
        tokens_training, _, _ = model._tokens(training)
        tokens_inference, _, _ = model._tokens(inference)
    assert torch.allclose(tokens_training[:, :-1], tokens_inference[:, :-1], atol=1e-5)


@pytest.mark.parametrize("max_return", [6.0, 30.0])
def test_expert_sampling_weights_the_normalised_bin_position(max_return):
    bins, kappa = 60, 10.0
    model = MDT4Rec(
        ModelConfig(return_bins=bins, backbone=BackboneConfig(kind="tiny-gpt2", lora_dropout=0.0)),
        DataShape(items=ITEMS, state_length=10, max_timestep=30, max_return=max_return),
    )
    draws = torch.linspace(0, 1, 20001)[:-1]
    targets = _conditioning(
        model,
        torch.zeros(len(draws)),
        torch.zeros(len(draws), bins),
        SearchConfig(conditioning="expert_sample", kappa=kappa),
        draws,
    )
    positions = torch.round(targets / max_return * bins - 0.5).long()
    share = torch.bincount(positions, minlength=bins).float() / len(draws)
    expected = torch.softmax(kappa * (torch.arange(bins) + 0.5) / bins, dim=0)  # p(R) uniform: exp(kappa r)
    assert torch.allclose(share, expected, atol=2e-3)  # the same whatever the unit of returns
    assert share[-1] < 0.2 and share[bins // 2 :].sum() > 0.9  # leans high without sitting on the top bin


def test_item_factors_recover_the_logged_geometry_from_the_logs_alone():
    rng = np.random.default_rng(0)
    users, items, rank = 300, 40, 3
    truth = rng.normal(size=(users, rank)) @ rng.normal(size=(rank, items))
    observed = rng.random((users, items)) < 0.5
    u, i = np.nonzero(observed)
    vectors = factorise_items(u, i, truth[u, i], items, dim=rank)
    true_distances = np.linalg.norm(truth[:, :, None] - truth[:, None, :], axis=0) / np.sqrt(users)
    distances = np.linalg.norm(vectors[:, None] - vectors[None, :], axis=-1)
    scale = np.sqrt((true_distances**2).mean() / (distances**2).mean())
    assert np.corrcoef(distances.ravel(), true_distances.ravel())[0, 1] > 0.95
    assert np.abs(distances * scale - true_distances).mean() < 0.1 * true_distances.mean()


def test_each_rows_least_squares_factors_solve_its_own_normal_equations():
    """The batched solve (Gram matrices from their upper triangles) equals each row's dense least squares."""
    import scipy.sparse as sp

    from mdt4rec_core.data.item_factors import _solve_rows

    rng = np.random.default_rng(1)
    rows, columns, d, regularisation = 30, 12, 5, 0.05
    observed = rng.random((rows, columns)) < 0.4
    observed[0] = False  # a row without observations gets zeros
    values = np.where(observed, rng.integers(1, 6, (rows, columns)), 0).astype(float)
    other = rng.normal(size=(columns, d))
    solved = _solve_rows(sp.csr_matrix(observed.astype(float)), sp.csr_matrix(values), other, regularisation)
    for r in range(rows):
        q = other[observed[r]]
        normal = q.T @ q + regularisation * max(observed[r].sum(), 1) * np.eye(d)
        assert np.allclose(solved[r], np.linalg.solve(normal, q.T @ values[r, observed[r]]), atol=1e-10)
    assert not solved[0].any()


def test_trajectory_item_factors_are_a_function_of_the_logged_steps():
    trajectories = _quit_aware(_logs())
    steps = trajectories.steps
    again = factorise_items(
        steps["user_id"].to_numpy(), steps["action"].to_numpy(), steps["feedback"].to_numpy(), ITEMS, 16
    )
    assert trajectories.item_factors.shape == (ITEMS, 16)
    assert np.array_equal(trajectories.item_factors, again)  # the logged (user, item, feedback) triples only


def test_the_distance_response_counts_only_items_acted_on_not_the_initial_item():
    from mdt4rec_core.model.network import nearest_acted_distance

    factors = torch.tensor([[0.0], [1.0], [3.0], [6.0], [0.0]])  # 4 items on a line, then the padding row
    pad = 4
    # step 0: only the initial item (2); step 1: initial 2 then action 0; step 3 of an episode without initial item.
    items = torch.tensor([[2, pad, pad], [2, 0, pad], [1, 3, 0]])
    mask = items != pad
    distance = nearest_acted_distance(factors, items, mask, torch.tensor([0, 1, 3]))
    assert distance[0].tolist() == [0.0, 0.0, 0.0, 0.0]  # nothing acted on yet
    assert distance[1].tolist() == [0.0, 1.0, 3.0, 6.0]  # from item 0 only: the initial item 2 does not count
    assert distance[2].tolist() == [0.0, 0.0, 2.0, 0.0]  # nearest of items 1, 3, 0
