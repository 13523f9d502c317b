"""Maximum in-support return search: candidate lengths, the choice of w*, and batched == one at a time."""

import numpy as np
import pytest
import torch

from mdt4rec_core.config import BackboneConfig, DataShape, ModelConfig, SearchConfig
from mdt4rec_core.errors import InputError
from mdt4rec_core.inference.incremental import IncrementalSearch
from mdt4rec_core.inference.search import (
    EpisodeContext,
    _decide,
    candidate_lengths,
    search,
    search_one_at_a_time,
    windows,
)
from mdt4rec_core.model.network import MDT4Rec
from mdt4rec_core.model.packing import pack_suffixes
from mdt4rec_core.model.placement import inference_precision, resolve_device

ITEMS, N, K = 25, 3, 6


def _model(kind, quality=True):
    """A random model whose action head uses item factors and the distance response (weights made non-zero), with a
    random item quality (or none, as in checkpoints trained before it was kept)."""
    torch.manual_seed(1)
    model = MDT4Rec(
        ModelConfig(context_steps=K, item_dim=8, return_bins=12, backbone=BackboneConfig(kind=kind, lora_dropout=0.0)),
        DataShape(items=ITEMS, state_length=N, max_timestep=30, max_return=10.0, factor_dim=4),
        item_factors=torch.randn(ITEMS, 4),
        item_quality=torch.rand(ITEMS) if quality else None,
    )
    torch.nn.init.normal_(model.distance_weights.weight)
    return model


def _context(rng, steps, forbid=False):
    items = rng.integers(0, ITEMS, (steps, N))
    mask = rng.random((steps, N)) > 0.2
    forbidden = rng.random(ITEMS) < 0.3 if forbid else None
    return EpisodeContext(
        state_items=np.where(mask, items, ITEMS),
        state_feedback=rng.random((steps, N)).astype(np.float32),
        state_mask=mask,
        returns_to_go=np.sort(rng.random(steps) * 10)[::-1].astype(np.float32).copy(),
        actions=rng.integers(0, ITEMS, steps - 1),
        forbidden=forbidden,
    )


def test_candidate_lengths():
    assert candidate_lengths(1, 20, 2) == [1]
    assert candidate_lengths(7, 20, 2) == [7, 5, 3, 1]
    assert candidate_lengths(30, 20, 2) == list(range(20, 0, -2))
    assert candidate_lengths(30, 20, 3, search=False) == [20]


def test_decide_takes_the_candidate_with_the_largest_estimate_and_masks_forbidden_items():
    forbidden = np.zeros(5, dtype=bool)
    forbidden[4] = True
    context = EpisodeContext(
        np.zeros((3, 1)), np.zeros((3, 1)), np.ones((3, 1), bool), np.zeros(3), np.zeros(2), forbidden
    )
    logits = torch.tensor([[0.0, 1, 2, 3, 9]])  # the chosen candidate's (w=1): prefers 4, then 3
    decision = _decide(
        [context], [[3, 1]], logits, torch.tensor([1.0, 2.5]), torch.tensor([1.0, 2.5]), SearchConfig(top_k=2), 0
    )[0]
    assert decision.chosen_length == 1 and decision.items.tolist() == [3, 2]  # item 4 is forbidden


@pytest.mark.parametrize(
    ("kind", "conditioning", "search_lengths", "max_batch_tokens", "decoding"),
    [
        ("tiny-gpt2", "max_return", True, None, "argmax"),
        ("tiny-gpt2", "expert_sample", True, 20, "sample"),  # slices of one row
        ("tiny-gpt2", "expert_sample", False, None, "argmax"),
        ("tiny-llama", "max_return", True, 40, "sample"),
        ("tiny-llama", "expert_sample", True, None, "argmax"),
        ("tiny-llama", "expert_sample", False, 4096, "sample"),
        ("tiny-gpt2", "max_return", True, None, "quality"),
        ("tiny-llama", "max_return", False, None, "quality"),
    ],
)
def test_batched_search_equals_the_one_at_a_time_loop(kind, conditioning, search_lengths, max_batch_tokens, decoding):
    model = _model(kind)
    rng = np.random.default_rng(0)
    contexts = [_context(rng, steps, forbid=steps % 2 == 0) for steps in (1, 2, 5, 6, 9, 14)]
    config = SearchConfig(
        delta=2,
        conditioning=conditioning,
        kappa=2.0,
        top_k=5,
        search=search_lengths,
        decoding=decoding,
        sample_from=8,
        quality_from=8,
        max_batch_tokens=max_batch_tokens,
    )
    batched = search(model, contexts, config, seed=3)
    looped = search_one_at_a_time(model, contexts, config, seed=3)
    for fast, slow in zip(batched, looped, strict=True):
        assert fast.lengths == slow.lengths
        assert np.allclose(fast.max_returns, slow.max_returns, atol=1e-5)
        assert np.allclose(fast.conditioned_returns, slow.conditioned_returns, atol=1e-5)
        assert fast.chosen_length == slow.chosen_length == fast.lengths[int(np.argmax(fast.max_returns))]
        assert fast.items.tolist() == slow.items.tolist()
    for decision, context in zip(batched, contexts, strict=True):
        if context.forbidden is not None:
            assert not context.forbidden[decision.items].any()


def test_quality_decoding_orders_the_policys_best_items_by_their_logged_quality():
    """The items are the ``quality_from`` best allowed items of the argmax decoding, best quality first; a checkpoint
    without item quality cannot decode by it."""
    model = _model("tiny-gpt2")
    rng = np.random.default_rng(5)
    contexts = [_context(rng, steps, forbid=True) for steps in (1, 3, 8)]
    pool = search(model, contexts, SearchConfig(top_k=6))
    chosen = search(model, contexts, SearchConfig(top_k=3, decoding="quality", quality_from=6))
    quality = model.item_quality.numpy()
    for argmax, decision, context in zip(pool, chosen, contexts, strict=True):
        assert decision.chosen_length == argmax.chosen_length
        expected = sorted(argmax.items.tolist(), key=lambda item: -quality[item])[:3]
        assert decision.items.tolist() == expected and not context.forbidden[decision.items].any()
    with pytest.raises(InputError, match="no item quality"):
        search(_model("tiny-gpt2", quality=False), contexts, SearchConfig(decoding="quality"))


def test_packing_keeps_each_candidate_to_its_own_tokens():
    lengths = [[6, 4, 2], [5, 3, 1], [1]]
    packed = pack_suffixes(lengths, K, torch.float32)
    allowed = packed.mask[:, 0] == 0
    rows, width = packed.positions.shape
    assert width == 3 * 6 - 1  # the longest candidate fills a row
    seen = []
    for number, w in enumerate(w for user in lengths for w in user):
        user = next(u for u, user_lengths in enumerate(lengths) if number < sum(map(len, lengths[: u + 1])))
        row, last = divmod(int(packed.return_slot[number]), width)
        assert int(packed.state_slot[number]) == row * width + last - 1  # s_t comes right before R_t
        first = last - (3 * w - 1) + 1
        span = range(first, last + 1)
        tokens = packed.token_index[row, first : last + 1].tolist()
        assert tokens == list(range((user + 1) * 3 * K - 3 * w, (user + 1) * 3 * K - 1))  # the suffix, up to R_t
        assert packed.positions[row, first : last + 1].tolist() == list(range(3 * w - 1))
        assert set(packed.candidate[row, first : last + 1].tolist()) == {number}
        # R_t sees exactly its own candidate's tokens, and itself
        assert torch.nonzero(allowed[row, last]).flatten().tolist() == list(span)
        seen.extend((row, column) for column in span)
    assert len(seen) == len(set(seen)) == sum(3 * w - 1 for user in lengths for w in user)
    assert rows < len(seen) / width + 1.5  # best fit leaves little room empty


def test_without_search_only_the_full_history_is_used():
    model = _model("tiny-gpt2")
    rng = np.random.default_rng(1)
    contexts = [_context(rng, 9), _context(rng, 3)]
    decisions = search(model, contexts, SearchConfig(search=False))
    assert [d.lengths for d in decisions] == [[K], [3]]
    assert [float(d.conditioned_returns[0]) for d in decisions] == pytest.approx(
        [c.returns_to_go[-1] for c in contexts]
    )


@pytest.mark.parametrize(
    ("kind", "conditioning", "delta"),
    [("tiny-gpt2", "max_return", 2), ("tiny-llama", "expert_sample", 2), ("tiny-llama", "max_return", 3)],
)
def test_incremental_search_equals_re_encoding_over_whole_episodes(kind, conditioning, delta):
    """Episodes longer than K (starts retire), some ending early (rows dropped): at every step the cached search
    decides as the search that re-encodes every candidate; a search joining mid-episode rebuilds its caches."""
    model = _model(kind)
    rng = np.random.default_rng(4)
    steps = 2 * K + 1
    episodes = [_context(rng, steps) for _ in range(8)]
    ends = [steps, steps, 4, steps, 9, 1, 2, 3]  # episode e is live at steps t < ends[e]
    config = SearchConfig(delta=delta, conditioning=conditioning, kappa=2.0, top_k=4)
    cached, joining = IncrementalSearch(model, config), IncrementalSearch(model, config)
    for t in range(steps):
        live = np.array([e for e in range(len(episodes)) if t < ends[e]])
        contexts = [episodes[e].at(t) for e in live]
        expected = search(model, contexts, config, seed=t)
        got = [cached.decide(contexts, live, seed=t)]
        if t >= K:
            got.append(joining.decide(contexts, live, seed=t))
        for decisions in got:
            for fast, slow in zip(decisions, expected, strict=True):
                assert fast.lengths == slow.lengths
                assert np.allclose(fast.max_returns, slow.max_returns, atol=1e-5)
                assert np.allclose(fast.conditioned_returns, slow.conditioned_returns, atol=1e-5)
                assert fast.chosen_length == slow.chosen_length
                assert fast.items.tolist() == slow.items.tolist()
    assert cached.step == steps - 1 and sorted(cached.slot_start) == list(range(steps - K, steps))  # the window only
    assert len(cached.episodes) == 4  # the rows were compacted when 4 of 8 episodes were left
    assert cached.columns < 3 * steps  # columns before the window were dropped


@pytest.mark.parametrize("kind", ["tiny-gpt2", "tiny-llama"])
def test_bf16_inference_matches_fp32_within_the_stated_tolerance(kind):
    """bf16 autocast (what "auto" runs on CUDA), here on the CPU: max-return estimates within 2 % of the largest
    return, action logits within 5 % of their spread, the same first items (docs/ARCHITECTURE.md states this)."""
    model = _model(kind)
    rng = np.random.default_rng(0)
    contexts = [_context(rng, steps) for steps in (1, 2, 5, 6, 9, 14)]
    full = search(model, contexts, SearchConfig(precision="fp32", top_k=3))
    half = search(model, contexts, SearchConfig(precision="bf16", top_k=3))
    for a, b in zip(full, half, strict=True):
        assert np.abs(a.max_returns - b.max_returns).max() <= 0.02 * model.shape.max_return
        assert a.items[0] == b.items[0]
    lengths = [[min(c.steps, K)] for c in contexts]
    batch = windows(model, contexts, [w[0] for w in lengths], np.ones(len(contexts), dtype=np.float32))
    with torch.no_grad():
        reference = model.decide(batch, lengths).action_logits
        with inference_precision(torch.device("cpu"), "bf16"):
            lowered = model.decide(batch, lengths).action_logits
    error = (reference - lowered.float()).abs().max()
    assert 0 < error <= 0.05 * reference.std()  # bf16 did run, and stayed within the tolerance


def test_device_settings_name_a_device_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    for bad in ("tpu", "mps", "cuda:99", "not a device"):
        with pytest.raises(InputError, match="device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")


def test_a_cache_over_its_bound_gives_way_to_re_encoding():
    """``search.reuse_megabytes``: a full window's cache for these episodes would not fit, so nothing is kept and
    the decisions are the re-encoding search's."""
    model = _model("tiny-gpt2")
    rng = np.random.default_rng(5)
    episodes = [_context(rng, 4) for _ in range(3)]
    config = SearchConfig(top_k=3, reuse_megabytes=1e-4)
    bounded = IncrementalSearch(model, config)
    for t in range(4):
        contexts = [context.at(t) for context in episodes]
        decisions = bounded.decide(contexts, np.arange(3), seed=t)
        assert bounded.cache is None  # nothing kept
        expected = search(model, contexts, config, seed=t)
        assert [d.items.tolist() for d in decisions] == [d.items.tolist() for d in expected]
    roomy = IncrementalSearch(model, config.model_copy(update={"reuse_megabytes": 64}))
    roomy.decide([context.at(0) for context in episodes], np.arange(3))
    assert roomy.cache is not None
