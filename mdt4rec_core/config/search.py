"""Settings of the stitched search at inference (``mdt4rec_core/inference/search.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mdt4rec_core.config.base import StrictModel


class SearchConfig(StrictModel):
    """How a trained model chooses: over the candidate history lengths (``search``) or on the full history (the
    "-Max" ablation, conditioned on the running return), on which return-to-go, and how an item is drawn."""

    delta: int = Field(2, ge=1, description="candidate history lengths are every delta-th suffix of the window")
    conditioning: Literal["max_return", "expert_sample"] = Field(
        "max_return",
        description="max_return: condition on the max-return head's estimate (EDT's default); expert_sample: on a "
        "draw from the return bins tilted by exp(kappa r)",
    )
    kappa: float = Field(10.0, ge=0, description="expert weight on the normalised bin position r in [0, 1]")
    top_k: int = Field(10, ge=1, description="items returned per decision")
    search: bool = Field(True, description="false: the -Max ablation (full history, no search)")
    decoding: Literal["argmax", "sample", "quality"] = Field(
        "argmax",
        description="argmax: the best items by the action logits; sample: a draw among them; quality: the policy's "
        "best quality_from items, ordered by their quality in the training logs (shrunk mean logged reward)",
    )
    sample_from: int = Field(50, ge=1, description="sample: draw among the best this many items")
    quality_from: int = Field(20, ge=1, description="quality: order the best this many items by their logged quality")
    temperature: float = Field(1.0, gt=0, description="sample: softmax temperature of the draw")
    max_batch_tokens: int | None = Field(
        4096, ge=1, description="each pass runs its packed rows in slices of at most this many tokens"
    )
    device: str = Field("auto", description="where inference runs: auto (CUDA when present), cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="inference arithmetic: auto is bf16 autocast on CUDA and fp32 on the CPU"
    )
    reuse_megabytes: float = Field(
        4096,
        ge=0,
        description="in the simulator loop, keep pass 1's keys and values from step to step while those of a full "
        "window of every live episode fit in this many MiB (0: re-encode every step)",
    )
