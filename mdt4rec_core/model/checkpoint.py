"""Checkpoints: ``model.safetensors`` (every weight but the frozen pre-trained backbone weights) beside
``config.json`` (the network's ModelConfig and DataShape), ``catalogue.parquet`` (item ids in index order),
``metadata.json`` (the training data) and ``run_config.json`` (the resolved RunConfig that trained it). Loading
rebuilds the network from config.json, reloads the frozen backbone from its source, and unpickles nothing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import polars as pl
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdt4rec_core.config import DataShape, ModelConfig, RunConfig, SearchConfig
from mdt4rec_core.errors import InputError
from mdt4rec_core.model.network import MDT4Rec

WEIGHTS, CONFIG, CATALOGUE, METADATA = "model.safetensors", "config.json", "catalogue.parquet", "metadata.json"
RUN_CONFIG = "run_config.json"
SHAPE_KEYS = ("items", "state_length", "max_timestep", "max_return", "factor_dim")
"""Keys of a DataShape that checkpoints written before config.json held {model, shape} kept among the model's."""


def saved_state(model: MDT4Rec) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps: trainable parameters and buffers, and the frozen backbone weights too unless they
    come from a pre-trained source that loading reads again (a random backbone could not be rebuilt)."""
    backbone = model.config.backbone
    if not (backbone.pretrained and backbone.kind in ("gpt2", "smollm2")):
        return {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}  # clone: tied weights
    keep = {name for name, p in model.named_parameters() if p.requires_grad}
    keep |= {name for name, _ in model.named_buffers()}
    return {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items() if name in keep}


def save_checkpoint(model: MDT4Rec, catalogue: pl.DataFrame, folder: Path, metadata: dict, run: RunConfig) -> None:
    """Write the files into ``folder`` (each to a temporary name, then renamed). ``metadata``: what serving needs
    to know about the training data (feedback range, dataset, trajectory version); ``run``: what trained it."""
    folder.mkdir(parents=True, exist_ok=True)
    network = {"model": model.config.model_dump(mode="json"), "shape": model.shape.model_dump(mode="json")}
    _atomic(folder / METADATA, lambda path: path.write_text(json.dumps(metadata, indent=2)))
    _atomic(folder / RUN_CONFIG, lambda path: path.write_text(run.model_dump_json(indent=2)))
    _atomic(folder / WEIGHTS, lambda path: save_file(saved_state(model), str(path)))
    _atomic(folder / CONFIG, lambda path: path.write_text(json.dumps(network, indent=2)))
    _atomic(folder / CATALOGUE, lambda path: catalogue.write_parquet(path))


def load_checkpoint(folder: Path) -> tuple[MDT4Rec, pl.DataFrame, dict]:
    """The model (eval mode), its catalogue (``item_id``, ``index``: one row per item in index order) and metadata;
    a missing, corrupt or mismatched checkpoint file is an InputError naming the file."""
    for name in (WEIGHTS, CONFIG, CATALOGUE, METADATA):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: not a checkpoint folder ({name} missing)")
    config, shape = _read_config(folder / CONFIG)
    catalogue = _read_catalogue(folder / CATALOGUE, shape.items)
    metadata = _read_metadata(folder / METADATA)
    return _read_model(folder, config, shape).eval(), catalogue, metadata


def read_run_config(folder: Path) -> RunConfig | None:
    """The RunConfig that trained the checkpoint in ``folder``; None for a checkpoint written without one."""
    path = folder / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        return RunConfig.model_validate(_read_json(path))
    except ValidationError as exc:
        raise _damaged(path, f"not a valid run configuration ({exc.error_count()} errors)") from None


def checkpoint_search(folder: Path) -> SearchConfig:
    """The search settings of the run that trained the checkpoint in ``folder`` (the defaults for one without)."""
    run = read_run_config(folder)
    return run.search if run is not None else SearchConfig()


def _damaged(path: Path, problem: str) -> InputError:
    return InputError(f"{path}: {problem}; the checkpoint is damaged: train it again or restore the folder")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"not valid JSON ({exc.__class__.__name__})") from None


def _read_config(path: Path) -> tuple[ModelConfig, DataShape]:
    data = _read_json(path)
    if isinstance(data, dict) and "shape" not in data:  # written with the sizes among the model's settings
        model = {key: value for key, value in data.items() if key not in SHAPE_KEYS}
        model["item_factors"] = bool(data.get("factor_dim"))
        data = {"model": model, "shape": {key: data[key] for key in SHAPE_KEYS if key in data}}
    try:
        return ModelConfig.model_validate(data["model"]), DataShape.model_validate(data["shape"])
    except (ValidationError, KeyError, TypeError) as exc:
        raise _damaged(path, f"not a valid model configuration ({exc.__class__.__name__})") from None


def _read_catalogue(path: Path, items: int) -> pl.DataFrame:
    """The item ids in index order: ``item_id`` (string) and ``index`` (0 .. items - 1), ``items`` rows."""
    try:
        catalogue = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise _damaged(path, f"not a readable Parquet file ({exc.__class__.__name__})") from None
    schema = catalogue.schema
    if schema.get("item_id") != pl.String or not (schema.get("index") or pl.Null).is_integer():
        raise _damaged(path, f"expected columns item_id (string) and index (integer), found {dict(schema)}")
    if catalogue.height != items:
        raise _damaged(path, f"{catalogue.height} items where config.json says {items}")
    if not catalogue["index"].equals(pl.Series("index", range(items)), check_dtypes=False):
        raise _damaged(path, "index is not 0, 1, ... in row order")
    return catalogue


def _read_metadata(path: Path) -> dict:
    """The training data's description: ``dataset``, ``trajectory_version`` and the finite feedback range."""
    metadata = _read_json(path)
    if not isinstance(metadata, dict):
        raise _damaged(path, "expected a JSON object")
    for key in ("feedback_min", "feedback_max"):
        value = metadata.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _damaged(path, f"{key} must be a finite number (found {value!r})")
    for key in ("dataset", "trajectory_version"):
        if not isinstance(metadata.get(key), str):
            raise _damaged(path, f"{key} must be a string (found {metadata.get(key)!r})")
    return metadata


def _read_model(folder: Path, config: ModelConfig, shape: DataShape) -> MDT4Rec:
    """The network of ``config`` and ``shape`` with the weights of ``model.safetensors``; they must match key by
    key, except that checkpoints written before the item quality was kept load with a zero ``item_quality`` (which
    ``decoding: quality`` refuses)."""
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise _damaged(folder / WEIGHTS, f"unreadable weights ({exc})") from None
    model = MDT4Rec(config, shape)
    expected = saved_state(model)
    missing = sorted(set(expected) - set(state) - {"item_quality"})
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise InputError(f"{folder}: config.json does not match model.safetensors ({detail})")
    model.load_state_dict(state, strict=False)
    return model


def _atomic(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    temporary.replace(path)
