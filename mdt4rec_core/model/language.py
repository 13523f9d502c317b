"""The language-model auxiliary loss corpus: the dataset's item texts (titles, genres, tags), tokenised once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from mdt4rec_core.config import BackboneConfig
from mdt4rec_core.model.backbone import smollm2_folder


@dataclass(frozen=True)
class TextCorpus:
    """``tokens``: one token-id list per text (at most ``max_tokens``); ``pad_id`` pads batches on the right."""

    tokens: list[list[int]]
    pad_id: int

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, L), attention_mask (B, L)) of ``batch_size`` random texts."""
        chosen = [self.tokens[i] for i in rng.integers(len(self.tokens), size=batch_size)]
        width = max(len(t) for t in chosen)
        ids = torch.full((batch_size, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, tokens in enumerate(chosen):
            ids[row, : len(tokens)] = torch.as_tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask


def item_corpus(texts: list[str], backbone: BackboneConfig, max_tokens: int = 48) -> TextCorpus | None:
    """The corpus for a pre-trained backbone that has a tokenizer (None otherwise: no language loss)."""
    if not backbone.pretrained or backbone.kind not in ("gpt2", "smollm2"):
        return None
    source = smollm2_folder(backbone.cache_dir) if backbone.kind == "smollm2" else Path(str(backbone.path))
    tokenizer = AutoTokenizer.from_pretrained(source)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        return None
    tokens = [ids[:max_tokens] for ids in tokenizer(texts)["input_ids"] if len(ids) >= 2]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TextCorpus(tokens, int(pad or 0)) if tokens else None
