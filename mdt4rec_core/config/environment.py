"""Settings of the simulators and of the evaluation in them: protocols, modes, the ground-truth recipe, the gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mdt4rec_core.config.base import StrictModel

Protocol = Literal["paper", "strict"]
PROTOCOLS: tuple[Protocol, ...] = ("paper", "strict")
Mode = Literal["FB", "NX_0", "NX_10"]
MODES: tuple[Mode, ...] = ("FB", "NX_0", "NX_10")


class FactorisationConfig(StrictModel):
    """The recipe of a simulator's ground truth: a matrix factorisation of the logged ratings by SGD."""

    factors: int = Field(6, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(80, ge=1)
    train_fraction: float = Field(0.9, gt=0, le=1)
    seed: int = 42
    init_std: float = Field(
        1.0, gt=0, description="N(0, 1), torch.nn.Embedding's default: reproduces the published distance percentiles"
    )
    clip_min: float = 0.0
    clip_max: float = 5.0


class GateConfig(StrictModel):
    """The evaluation the promotion gate compares: R_cumu in this mode and protocol, on the run's seeds. A version
    becomes champion only when its mean is above the upper 95 % bound of every baseline in ``baselines`` (evaluated
    on the same environment, episodes and seeds) and above the current champion's."""

    mode: Mode = "FB"
    protocol: Protocol = "paper"
    baselines: list[Literal["random", "popularity"]] = Field(default_factory=lambda: ["random", "popularity"])


class EvaluationPlan(StrictModel):
    modes: list[Mode] = Field(default_factory=lambda: ["FB", "NX_0", "NX_10"], min_length=1)
    protocols: list[Protocol] = Field(default_factory=lambda: ["paper", "strict"], min_length=1)
    episodes: int = Field(1000, ge=1, description="episodes per seed")
    seeds: int = Field(3, ge=1, description="seeds 0 .. seeds-1, the same for every version")
    gate: GateConfig = GateConfig()
