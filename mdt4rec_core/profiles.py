"""Run profiles (conf/profiles/<name>.yaml): what one run of the training pipeline does, as one typed plan.

A profile names a model preset (conf/models/) and changes to it, changes to the pipeline configuration
(conf/pipeline.yaml), the evaluation budget and the promotion gate, and how training scales out. Overrides are
``key.path=value`` assignments on the profile document (``train.max_steps=10``, ``evaluation.episodes=20``,
``pipeline.trajectories.state_length=5``); every one is checked, with the preset and the network keys, before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import Field

from mdt4rec_core.config import (
    CONF_DIR,
    ConfigError,
    PipelineConfig,
    StrictModel,
    build_model,
    flatten_keys,
    load_config,
    load_pipeline_config,
)
from mdt4rec_core.envs.build import Protocol
from mdt4rec_core.envs.simulator import Mode

Profile = Literal["smoke", "cpu", "paper"]
PROFILES: tuple[str, ...] = get_args(Profile)


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


class ScaleConfig(StrictModel):
    """``train_processes`` > 1 trains under torchrun (DDP); evaluations fan out on the task runner."""

    train_processes: int = Field(1, ge=1)
    task_runner: Literal["threads", "dask"] = "threads"
    dask_workers: int = Field(2, ge=1)


class RunProfile(StrictModel):
    preset: str
    model: dict[str, Any] = Field(default_factory=dict, description="changes to the preset's network keys")
    train: dict[str, Any] = Field(default_factory=dict, description="changes to the preset's training keys")
    pipeline: dict[str, Any] = Field(default_factory=dict, description="changes to conf/pipeline.yaml")
    evaluation: EvaluationPlan = EvaluationPlan()
    scale: ScaleConfig = ScaleConfig()


@dataclass(frozen=True)
class RunPlan:
    """A resolved run: the pipeline configuration, the preset with its assignments (also what ``mdt4rec train
    --set`` takes, for torchrun), the evaluation plan and the scale-out settings."""

    profile: str
    pipeline: PipelineConfig
    preset: str
    preset_overrides: list[str]
    evaluation: EvaluationPlan
    scale: ScaleConfig

    def __post_init__(self) -> None:
        gate = self.evaluation.gate
        if gate.mode not in self.evaluation.modes or gate.protocol not in self.evaluation.protocols:
            raise ConfigError(
                f"profile {self.profile!r}: the gate ({gate.mode}, {gate.protocol}) must be among the evaluated "
                f"modes {self.evaluation.modes} and protocols {self.evaluation.protocols}"
            )


def load_run_plan(profile: str, dataset: str | None = None, overrides: list[str] = ()) -> RunPlan:
    """The plan of ``profile`` for ``dataset`` (default: the pipeline configuration's) with ``overrides``."""
    from mdt4rec_core.model.config import ModelConfig
    from mdt4rec_core.train import load_preset

    path = CONF_DIR / "profiles" / f"{profile}.yaml"
    if profile not in PROFILES or not path.is_file():
        raise ConfigError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    run = load_config(RunProfile, path, list(overrides))
    pipeline_assignments = [f"{key}={json.dumps(value)}" for key, value in flatten_keys(run.pipeline)]
    pipeline = load_pipeline_config(pipeline_assignments, dataset=dataset)
    preset_overrides = [
        f"{section}.{key}={json.dumps(value)}"
        for section, values in (("model", run.model), ("train", run.train))
        for key, value in flatten_keys(values)
    ]
    preset = load_preset(run.preset, preset_overrides)
    build_model(ModelConfig, {"items": 1, **preset.model}, f"profile {profile!r} model")  # unknown keys fail here
    return RunPlan(profile, pipeline, run.preset, preset_overrides, run.evaluation, run.scale)
