"""Checkpoints: ``model.safetensors`` (every weight but the frozen pre-trained backbone weights) beside
``config.json`` (the ModelConfig) and ``catalogue.parquet`` (item ids in index order). Loading rebuilds the network
from the config, reloads the frozen backbone from its source, and unpickles nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdt4rec_core.errors import InputError
from mdt4rec_core.model.config import ModelConfig
from mdt4rec_core.model.network import MDT4Rec

WEIGHTS, CONFIG, CATALOGUE, METADATA = "model.safetensors", "config.json", "catalogue.parquet", "metadata.json"


def saved_state(model: MDT4Rec) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps: trainable parameters and buffers, and the frozen backbone weights too unless they
    come from a pre-trained source that loading reads again (a random backbone could not be rebuilt)."""
    backbone = model.config.backbone
    if not (backbone.pretrained and backbone.kind in ("gpt2", "smollm2")):
        return {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}  # clone: tied weights
    keep = {name for name, p in model.named_parameters() if p.requires_grad}
    keep |= {name for name, _ in model.named_buffers()}
    return {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items() if name in keep}


def save_checkpoint(model: MDT4Rec, catalogue: pl.DataFrame, folder: Path, metadata: dict) -> None:
    """Write the files into ``folder`` (each to a temporary name, then renamed). ``metadata``: what serving needs
    to know about the training data (feedback range, dataset, trajectory version)."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic(folder / METADATA, lambda path: path.write_text(json.dumps(metadata, indent=2)))
    _atomic(folder / WEIGHTS, lambda path: save_file(saved_state(model), str(path)))
    _atomic(folder / CONFIG, lambda path: path.write_text(model.config.model_dump_json(indent=2)))
    _atomic(folder / CATALOGUE, lambda path: catalogue.write_parquet(path))


def load_checkpoint(folder: Path) -> tuple[MDT4Rec, pl.DataFrame, dict]:
    """The model (eval mode), its catalogue and metadata; a missing, corrupt or mismatched checkpoint is an
    InputError."""
    for name in (WEIGHTS, CONFIG, CATALOGUE, METADATA):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: not a checkpoint folder ({name} missing)")
    try:
        config = ModelConfig.model_validate(json.loads((folder / CONFIG).read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise InputError(f"{folder / CONFIG}: not a valid model configuration ({exc.__class__.__name__})") from None
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{folder / WEIGHTS}: unreadable weights ({exc})") from None
    catalogue = pl.read_parquet(folder / CATALOGUE)
    if catalogue.height != config.items:
        raise InputError(f"{folder}: catalogue has {catalogue.height} items, config.json says {config.items}")
    model = MDT4Rec(config)
    expected = saved_state(model)
    missing = sorted(set(expected) - set(state))
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
    return model.eval(), catalogue, json.loads((folder / METADATA).read_text())


def _atomic(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    temporary.replace(path)
