"""Typed configuration, the lowest layer of the library: every setting of a run in one tree (``RunConfig``), each
part in the module of its concern. Importing it loads no torch, Prefect or MLflow."""

from mdt4rec_core.config.base import (
    CONF_DIR,
    StrictModel,
    apply_overrides,
    flatten_keys,
    load_config,
    load_yaml,
    parse_override,
    validate_config,
)
from mdt4rec_core.config.data import (
    LOCK_TIMEOUT_SECONDS,
    DatasetConfig,
    DatasetName,
    EnvironmentSpec,
    IngestConfig,
    PackageLocation,
    ReaderFormat,
    SideTable,
    TimestampUnit,
    TrajectoryConfig,
    check_dataset_name,
    load_dataset_config,
    resolve_dataset,
)
from mdt4rec_core.config.environment import (
    MODES,
    PROTOCOLS,
    EvaluationPlan,
    FactorisationConfig,
    GateConfig,
    Mode,
    Protocol,
)
from mdt4rec_core.config.model import BackboneConfig, DataShape, LossConfig, ModelConfig, TrainConfig
from mdt4rec_core.config.run import PROFILES, Profile, RunConfig, ScaleConfig, load_run_config, load_run_config_file
from mdt4rec_core.config.search import SearchConfig
from mdt4rec_core.config.services import DeploymentConfig, ServingConfig, TrackingConfig
from mdt4rec_core.errors import ConfigError

__all__ = [
    "CONF_DIR",
    "LOCK_TIMEOUT_SECONDS",
    "MODES",
    "PROFILES",
    "PROTOCOLS",
    "BackboneConfig",
    "ConfigError",
    "DataShape",
    "DatasetConfig",
    "DatasetName",
    "DeploymentConfig",
    "EnvironmentSpec",
    "EvaluationPlan",
    "FactorisationConfig",
    "GateConfig",
    "IngestConfig",
    "LossConfig",
    "Mode",
    "ModelConfig",
    "PackageLocation",
    "Profile",
    "Protocol",
    "ReaderFormat",
    "RunConfig",
    "ScaleConfig",
    "SearchConfig",
    "ServingConfig",
    "SideTable",
    "StrictModel",
    "TimestampUnit",
    "TrackingConfig",
    "TrainConfig",
    "TrajectoryConfig",
    "apply_overrides",
    "check_dataset_name",
    "flatten_keys",
    "load_config",
    "load_dataset_config",
    "load_run_config",
    "load_run_config_file",
    "load_yaml",
    "parse_override",
    "resolve_dataset",
    "validate_config",
]
