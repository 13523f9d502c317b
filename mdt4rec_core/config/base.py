"""The configuration machinery: strict pydantic models loaded from YAML files in the configuration folder
(``CONF_DIR``) with ``key.path=value`` overrides.

Every model forbids unknown keys, so a misspelt key is an error that names it instead of a silently ignored value.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mdt4rec_core.errors import ConfigError

CONF_ENV = "MDT4REC_CONF"
CONF_DIR = Path(os.environ.get(CONF_ENV) or files("mdt4rec_core").joinpath("conf"))
"""The configuration folder (``pipeline.yaml``, ``datasets/``, ``models/``, ``profiles/``, ``studies/``): the one
installed with the package (``mdt4rec_core/conf``), or the folder ``MDT4REC_CONF`` names when it is set (read when
this module is first imported)."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        check_key_path(model, keys, f"override {assignment!r}")
        node = merged
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return merged


def validate_config(model: type[Model], data: dict[str, Any], origin: str) -> Model:
    """Validate ``data`` into ``model``; the error names each offending key path and what was wrong with it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {_describe(err)}" if err["loc"] else _describe(err)
            for err in exc.errors()
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
    return validate_config(model, data, str(path))


def check_key_path(model: type[BaseModel], keys: list[str], where: str) -> None:
    """A ConfigError when ``keys`` is no path of ``model``'s tree (free-form mappings accept any key below them)."""
    current: Any = model
    for depth, key in enumerate(keys):
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return  # free-form mapping (e.g. dataset column maps): any key is allowed below here
        if key not in fields:
            path = ".".join(keys[: depth + 1])
            raise ConfigError(f"unknown configuration key {path!r} in {where}")
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
    if not err["loc"]:  # a check across keys: its message says what is wrong
        return err["msg"].removeprefix("Value error, ")
    return f"{err['msg']} (got {err.get('input')!r})"


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
