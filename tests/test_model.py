"""The MDT4Rec network on tiny backbones: causality, losses, LoRA."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdt4rec_core.config import BackboneConfig, DataShape, ModelConfig
from mdt4rec_core.data.batch import TrajectoryBatch
from mdt4rec_core.model.losses import expectile_loss, trajectory_losses
from mdt4rec_core.model.network import MDT4Rec

ITEMS, T, N = 30, 6, 4
SHAPE = DataShape(items=ITEMS, state_length=N, max_timestep=30, max_return=30.0)


def _model(kind="tiny-gpt2", encoder="mean", adaptation="lora", embedding="mlp"):
    torch.manual_seed(0)
    config = ModelConfig(
        context_steps=T,
        item_dim=8,
        state_encoder=encoder,
        embedding=embedding,
        backbone=BackboneConfig(kind=kind, adaptation=adaptation, lora_dropout=0.0),
    )
    return MDT4Rec(config, SHAPE).eval()


def _batch(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return TrajectoryBatch(
        state_items=torch.randint(0, ITEMS, (b, T, N), generator=g),
        state_feedback=torch.rand(b, T, N, generator=g),
        state_mask=torch.rand(b, T, N, generator=g) > 0.3,
        returns_to_go=torch.rand(b, T, generator=g) * 10,
        actions=torch.randint(0, ITEMS, (b, T), generator=g),
        timesteps=torch.arange(T).repeat(b, 1),
        step_mask=torch.ones(b, T, dtype=torch.bool),
        conditioned=torch.arange(b) % 2 == 0,
    )


MODELS = {(k, e): _model(k, e) for k in ("tiny-gpt2", "tiny-llama") for e in ("mean", "gru", "sasrec")}


@settings(max_examples=25, deadline=None)
@given(
    which=st.sampled_from(sorted(MODELS)),
    step=st.integers(0, T - 2),
    field=st.sampled_from(["state", "return", "action"]),
    seed=st.integers(0, 1000),
)
def test_changing_a_later_step_never_changes_earlier_outputs(which, step, field, seed):
    model = MODELS[which]
    batch = _batch(seed)
    later = _batch(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if field == "state":
        later.state_items[:, step + 1] = torch.randint(0, ITEMS, (2, N), generator=g)
        later.state_feedback[:, step + 1] = torch.rand(2, N, generator=g)
    elif field == "return":
        later.returns_to_go[:, step + 1] += 5.0
    else:
        later.actions[:, step + 1] = (later.actions[:, step + 1] + 1) % ITEMS
    with torch.no_grad():
        before, after = model(batch), model(later)
    keep = slice(0, step + 1)
    assert torch.allclose(before.action_logits[:, keep], after.action_logits[:, keep], atol=1e-6)
    assert torch.allclose(before.max_return[:, keep], after.max_return[:, keep], atol=1e-6)
    assert torch.allclose(before.return_bin_logits[:, keep], after.return_bin_logits[:, keep], atol=1e-6)


def test_the_state_head_has_not_seen_the_return_to_go_and_the_action_head_has_not_seen_the_action():
    model = MODELS[("tiny-llama", "mean")]
    batch, changed = _batch(3), _batch(3)
    changed.returns_to_go[:, 2] += 7.0
    changed.actions[:, 2] = (changed.actions[:, 2] + 1) % ITEMS
    with torch.no_grad():
        before, after = model(batch), model(changed)
    assert torch.allclose(before.max_return[:, 2], after.max_return[:, 2], atol=1e-6)  # s_2 precedes R_2
    assert not torch.allclose(before.action_logits[:, 2], after.action_logits[:, 2])  # R_2 changed: action head sees it
    changed_action_only = _batch(3)
    changed_action_only.actions[:, 2] = (changed_action_only.actions[:, 2] + 1) % ITEMS
    with torch.no_grad():
        third = model(changed_action_only)
    assert torch.allclose(before.action_logits[:, 2], third.action_logits[:, 2], atol=1e-6)  # a_2 comes after R_2


def test_left_padding_with_explicit_positions_matches_the_unpadded_window():
    model = MODELS[("tiny-gpt2", "mean")]
    full = _batch(5, b=1)
    padded = _batch(5, b=1)
    shift = 2  # the same 4 real steps, left-padded by 2
    for name in ("state_items", "state_feedback", "state_mask", "returns_to_go", "actions", "timesteps"):
        value = getattr(full, name)
        setattr(padded, name, torch.cat([value[:, :shift] * 0, value[:, : T - shift]], dim=1))
    padded.step_mask = torch.tensor([[False] * shift + [True] * (T - shift)])
    with torch.no_grad():
        reference = model(full).action_logits[:, : T - shift]
        shifted = model(padded).action_logits[:, shift:]
    assert torch.allclose(reference, shifted, atol=1e-5)


def test_expectile_loss():
    target, prediction = torch.randn(100), torch.randn(100)
    assert expectile_loss(target, prediction, 0.5) == pytest.approx(0.5 * ((target - prediction) ** 2).mean().item())
    under = expectile_loss(torch.tensor([1.0]), torch.tensor([0.0]), 0.99)  # u = +1: weight alpha
    over = expectile_loss(torch.tensor([0.0]), torch.tensor([1.0]), 0.99)  # u = -1: weight 1 - alpha
    assert under.item() == pytest.approx(0.99) and over.item() == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kind, per_layer", [("tiny-gpt2", 16 * 32 + 96 * 16), ("tiny-llama", 3 * 16 * 32 + 32 * 16 + 2 * 16 * 16)]
)
def test_lora_trains_only_adapters_and_leaves_base_weights(kind, per_layer):
    model = _model(kind).train()
    backbone = model.backbone.model
    trainable_backbone = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable_backbone and all("lora_" in n for n in trainable_backbone)
    assert sum(p.numel() for n, p in backbone.named_parameters() if p.requires_grad) == 2 * per_layer
    base = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _batch(1)
    losses = trajectory_losses(model(batch), batch, model.config, model.shape)
    losses["total"].backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    optimizer.step()
    assert all(torch.equal(p, base[n]) for n, p in backbone.named_parameters() if n in base)
    counts = model.parameter_counts()
    assert 0 < counts["trainable_params"] < counts["total_params"]


def test_adaptation_ablations():
    frozen = _model(adaptation="frozen")
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    full = _model(adaptation="full_finetune")
    assert all(p.requires_grad for p in full.backbone.parameters())
    linear = _model(embedding="linear")
    assert isinstance(linear.embed_state, torch.nn.Linear)


def test_last_step_only_equals_the_last_step_of_the_full_forward():
    model = MODELS[("tiny-llama", "gru")]
    batch = _batch(9)
    with torch.no_grad():
        full, last = model(batch), model(batch, last_step_only=True)
    assert torch.allclose(full.action_logits[:, -1:], last.action_logits, atol=1e-6)
    assert torch.allclose(full.max_return[:, -1:], last.max_return, atol=1e-6)
