"""Where a model runs and in which precision: ``device`` settings ("auto": CUDA when present, else the CPU; or a
torch device such as "cpu", "cuda", "cuda:1") and inference precision ("auto": bf16 autocast on CUDA, fp32 on the
CPU)."""

from __future__ import annotations

import contextlib
import os

import torch

from mdt4rec_core.config import SearchConfig
from mdt4rec_core.errors import InputError


def resolve_device(name: str) -> torch.device:
    """The torch device a ``device`` setting names; "auto" picks CUDA (the process's LOCAL_RANK under torchrun) when
    present. A device this machine lacks is an InputError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"device {name!r} is not a torch device (auto, cpu, cuda or cuda:N): {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: this machine has no CUDA device (use auto or cpu)")
        if device.index is None:  # under torchrun, each rank its own
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise InputError(f"device {name!r}: only cpu and cuda devices are supported")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def inference_precision(device: torch.device, precision: str):
    """A context manager for inference on ``device``: bf16 autocast for "bf16" (and "auto" on CUDA), else nothing."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def with_device(config: SearchConfig, device: str | None) -> SearchConfig:
    """``config`` with its ``device`` replaced when one is given."""
    return config if device is None else config.model_copy(update={"device": device})
