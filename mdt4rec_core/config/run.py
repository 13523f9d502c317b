"""The root of the configuration: ``RunConfig``, everything one run reads, resolved from layers of YAML.

Layers, each over the one before: ``conf/pipeline.yaml`` (the defaults of a run), the model preset
``conf/models/<preset>.yaml`` (``model`` and ``train``), the profile ``conf/profiles/<profile>.yaml`` (which names
its preset and may change any key), then ``key.path=value`` assignments (``--set`` on every command): for example
``trajectories.state_length=20``, ``model.backbone.lora_r=8``, ``train.max_steps=50``, ``search.kappa=5``,
``evaluation.episodes=20``. Every key of every layer is checked against the tree before any work.

The resolved RunConfig is what a flow hands its tasks, what multi-process training reads (a JSON file), what a
checkpoint keeps beside its weights and what MLflow logs as the run's parameters (the flattened key paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from mdt4rec_core.config.base import (
    CONF_DIR,
    StrictModel,
    apply_overrides,
    check_key_path,
    flatten_keys,
    load_yaml,
    parse_override,
    validate_config,
)
from mdt4rec_core.config.data import DatasetName, IngestConfig, TrajectoryConfig, check_dataset_name
from mdt4rec_core.config.environment import EvaluationPlan, FactorisationConfig
from mdt4rec_core.config.model import ModelConfig, TrainConfig
from mdt4rec_core.config.search import SearchConfig
from mdt4rec_core.config.services import DeploymentConfig, ServingConfig, TrackingConfig
from mdt4rec_core.errors import ConfigError

Profile = Literal["smoke", "cpu", "paper"]
PROFILES: tuple[str, ...] = get_args(Profile)
LAYER_NAMES = ("profile", "preset")
"""Keys that name a layer: chosen with ``--profile`` / ``--preset``, never assigned."""


class ScaleConfig(StrictModel):
    """``train_processes`` > 1 trains under torchrun (DDP); evaluations fan out on the task runner."""

    train_processes: int = Field(1, ge=1)
    task_runner: Literal["threads", "dask"] = "threads"
    dask_workers: int = Field(2, ge=1)


class RunConfig(StrictModel):
    """Everything one run reads. ``profile`` and ``preset`` name the layers it was resolved from (null: none)."""

    profile: Profile | None = None
    preset: str | None = None
    dataset: DatasetName = "ml-1m"
    store: str = "store"
    landing: str = Field("landing", description="new log files dropped in <landing>/<dataset>/ are ingested next run")
    ingest: IngestConfig = IngestConfig()
    trajectories: TrajectoryConfig = TrajectoryConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    environment: FactorisationConfig = Field(
        FactorisationConfig(), description="the recipe of the simulators' ground truth"
    )
    evaluation: EvaluationPlan = EvaluationPlan()
    scale: ScaleConfig = ScaleConfig()
    tracking: TrackingConfig = TrackingConfig()
    serving: ServingConfig = ServingConfig()
    deployment: DeploymentConfig = DeploymentConfig()

    @model_validator(mode="after")
    def _gate_is_evaluated(self) -> RunConfig:
        gate, evaluation = self.evaluation.gate, self.evaluation
        if gate.mode not in evaluation.modes or gate.protocol not in evaluation.protocols:
            raise ValueError(
                f"the gate ({gate.mode}, {gate.protocol}) must be among the evaluated modes {evaluation.modes} and "
                f"protocols {evaluation.protocols}"
            )
        return self

    def params(self) -> dict[str, str]:
        """Every setting as ``key.path`` -> its value as text, JSON but for plain strings (what MLflow logs)."""
        return {
            key: value if isinstance(value, str) else json.dumps(value)
            for key, value in flatten_keys(self.model_dump(mode="json"))
        }


def load_run_config(
    profile: str | None = None,
    dataset: str | None = None,
    overrides: list[str] = (),
    *,
    preset: str | None = None,
    store: str | None = None,
    base: Path | None = None,
) -> RunConfig:
    """The RunConfig of ``profile`` (or of the model ``preset`` alone, or of the defaults) for ``dataset`` and
    ``store`` when given, with the ``key.path=value`` ``overrides`` applied last; ``base`` replaces
    ``CONF_DIR/pipeline.yaml``. An unknown layer, key or value is a ConfigError naming it and the file it came
    from."""
    if dataset:
        check_dataset_name(dataset)
    base = base or CONF_DIR / "pipeline.yaml"
    layers: list[tuple[str, dict[str, Any]]] = [(str(base), load_yaml(base))]
    profile_layer: dict[str, Any] = {}
    if profile is not None:
        profile_layer = _layer_file("profile", profile, CONF_DIR / "profiles", known=PROFILES)
    preset = preset or profile_layer.get("preset")
    if preset is not None:
        layers.append((str(CONF_DIR / "models" / f"{preset}.yaml"), _layer_file("preset", preset, CONF_DIR / "models")))
    if profile is not None:
        layers.append((str(CONF_DIR / "profiles" / f"{profile}.yaml"), profile_layer))
    document: dict[str, Any] = {}
    for origin, layer in layers:
        for key, _ in flatten_keys(layer):
            check_key_path(RunConfig, key.split("."), origin)
        document = _merged(document, layer)
    document.update(profile=profile, preset=preset, **({"dataset": dataset} if dataset else {}))
    if store:
        document["store"] = store
    for assignment in overrides:
        if parse_override(assignment)[0][0] in LAYER_NAMES:
            raise ConfigError(
                f"override {assignment!r}: choose the profile with --profile and the preset with --preset"
            )
    document = apply_overrides(document, list(overrides), RunConfig)
    origin = " over ".join(reversed([origin for origin, _ in layers])) + (" with --set" if overrides else "")
    return validate_config(RunConfig, document, origin)


def load_run_config_file(path: Path) -> RunConfig:
    """A resolved RunConfig written as JSON (``RunConfig.model_dump_json``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable run configuration ({exc.__class__.__name__})") from None
    return validate_config(RunConfig, data, str(path))


def _layer_file(kind: str, name: str, folder: Path, known: tuple[str, ...] | None = None) -> dict[str, Any]:
    path = folder / f"{name}.yaml"
    names = known or tuple(sorted(p.stem for p in folder.glob("*.yaml")))
    if name not in names or not path.is_file():
        raise ConfigError(f"unknown {kind} {name!r} (known: {', '.join(names)})")
    return load_yaml(path)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` over it: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = _merged(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    return merged
