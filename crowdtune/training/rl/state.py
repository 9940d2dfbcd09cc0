"""What an algorithm keeps in `state_dir` across the updates of a face: its JSON state (read_state,
write_state) and embeddings of texts (EmbeddingCache), so each post is embedded once per face.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from crowdtune.training.checkpoints import write_json


class EmbeddingCache:
    """MiniLM embeddings of texts, kept in state_dir so each post is embedded once per face."""

    def __init__(self, path):
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        self.dirty = False
        if path is not None and path.is_file():
            with np.load(path) as stored:
                self.vectors = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def embed(self, texts: list[str], *, keep: bool = True) -> np.ndarray:
        from crowdtune.embeddings import EMBEDDING_DIM, embed

        missing = sorted({t for t in texts if self.key(t) not in self.vectors})
        fresh = dict(zip(missing, embed(missing), strict=True)) if missing else {}
        if keep and fresh:
            self.vectors.update({self.key(t): v for t, v in fresh.items()})
            self.dirty = True
        rows = [fresh[t] if t in fresh else self.vectors[self.key(t)] for t in texts]
        return np.stack(rows) if rows else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.asarray(list(self.vectors)), vectors=np.stack(list(self.vectors.values())))
        tmp.replace(self.path)
        self.dirty = False


def read_state(path: Path, default: dict) -> dict:
    return json.loads(path.read_text()) if path.is_file() else dict(default)


def write_state(path: Path, state: dict) -> None:
    write_json(path, state)
