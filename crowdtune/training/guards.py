"""Guards on generated posts: copying of training posts, diversity, closeness to the channel's style.

- copy rate: share of samples that reproduce a training post, either by a long exact word
  n-gram in common (>= `min_ngram` words, or about half of a short post) found through a hashed
  n-gram index, or by a near-duplicate embedding (cosine >= `embedding_threshold`).
- distinct-n: unique n-grams / all n-grams over a set of samples (1.0 = no repetition).
- style similarity: mean cosine of sample embeddings to the centroid of held-out posts, beside
  the same figure for real training posts (the reference a good model should reach).

Words, not model tokens, are the unit: the guards then mean the same for every base model and
can run where no tokenizer is loaded (e.g. before publishing). Links are not words: a t.co link
is random characters after "https://t.co/", which every sample with a link would "share".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")
URL = re.compile(r"https?://\S+|www\.\S+")  # as crowdtune.training.data.URL

Embedder = Callable[[list[str]], np.ndarray]


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks (links left out), the unit of all guards."""
    return WORD.findall(URL.sub(" ", text).lower())


def _cached_embedder(*, keep: bool) -> Embedder:
    """Embedding through the shared cache: training posts are kept (embedded once for every run,
    update and publish job), samples of a model are not (seen once)."""
    from crowdtune.embeddings import cached_embed

    return lambda texts: cached_embed(texts, keep=keep)


def _ngram_hashes(tokens: list[str], n: int) -> set[int]:
    return {hash(tuple(tokens[i : i + n])) for i in range(len(tokens) - n + 1)}


class CopyIndex:
    """Finds samples that reproduce one of the training posts.

    A sample copies post P (of L words) when they share a run of k consecutive words with
    k = min(min_ngram, max(ceil(short_fraction * L), min(L, min_short_ngram))): 12 words for
    long posts, about half of a short post, the whole of a very short one. A post of fewer than
    `min_words` words ("We", "Thank you!") is copied only by a sample that is that whole post:
    such a run inside a longer sample is no evidence of copying. Optionally, a sample
    whose embedding has cosine >= embedding_threshold with any training post is a copy too
    (catches copies with small edits). Only posts sharing a run of `candidate_ngram` words with
    the sample are compared (None: every post): on 3,000 real tweets every pair at cosine >= 0.95
    shared a 5-word run, and a sample has ~7 such candidates in 2,000 posts, so a first run embeds
    a few posts per sample instead of all of them. Post embeddings come from the shared embedding
    cache unless an `embedder` is given.
    """

    def __init__(
        self,
        posts: list[str],
        *,
        min_ngram: int = 12,
        short_fraction: float = 0.5,
        min_short_ngram: int = 6,
        min_words: int = 4,
        embedding_threshold: float | None = 0.95,
        embedder: Embedder | None = None,
        candidate_ngram: int | None = 4,
    ):
        self.posts = list(posts)
        self.embedding_threshold = embedding_threshold
        self._embedder = embedder
        self._post_vectors: np.ndarray | None = None
        self.candidate_ngram = candidate_ngram
        self._posts_by_gram: dict[int, list[int]] | None = None  # n-gram hash -> posts, built on first use
        # hashes of the required-length n-grams, grouped by that length (at most min_ngram groups)
        self.hashes: dict[int, set[int]] = {}
        self.whole_posts: set[int] = set()  # hashes of the posts shorter than min_words
        for text in self.posts:
            tokens = words(text)
            if not tokens:
                continue
            if len(tokens) < min_words:
                self.whole_posts.add(hash(tuple(tokens)))
                continue
            k = min(min_ngram, max(math.ceil(short_fraction * len(tokens)), min(len(tokens), min_short_ngram)))
            self.hashes.setdefault(k, set()).update(_ngram_hashes(tokens, k))

    def ngram_copies(self, samples: list[str]) -> list[bool]:
        """Per sample: does it share a long enough exact word run with a training post?"""
        flags = []
        for text in samples:
            tokens = words(text)
            flags.append(hash(tuple(tokens)) in self.whole_posts
                         or any(_ngram_hashes(tokens, k) & hashes for k, hashes in self.hashes.items()))
        return flags

    def embedding_copies(self, samples: list[str]) -> list[bool]:
        """Per sample: is it a near-duplicate (cosine >= threshold) of a training post?"""
        if self.embedding_threshold is None or not samples or not self.posts:
            return [False] * len(samples)
        embed_samples = self._embedder or _cached_embedder(keep=False)
        if self.candidate_ngram is None:
            # brute force: 16 samples x 18,700 posts take ~11 ms here, far below embedding the samples
            best = (embed_samples(samples) @ self.post_vectors().T).max(axis=1)
            return [bool(c >= self.embedding_threshold) for c in best]
        candidates = [self._candidates(text) for text in samples]
        posts = sorted(set().union(*candidates))
        if not posts:
            return [False] * len(samples)
        sample_vectors = embed_samples(samples)  # (samples, 384)
        post_vectors = (self._embedder or _cached_embedder(keep=True))([self.posts[i] for i in posts])
        row = {post: r for r, post in enumerate(posts)}
        return [bool(ids) and float((post_vectors[[row[i] for i in ids]] @ vector).max()) >= self.embedding_threshold
                for ids, vector in zip(candidates, sample_vectors, strict=True)]

    def _candidates(self, sample: str) -> set[int]:
        """Posts sharing a run of candidate_ngram words (or the whole of a shorter post) with the sample."""
        if self._posts_by_gram is None:
            self._posts_by_gram = {}
            for i, text in enumerate(self.posts):
                tokens = words(text)
                for gram in _ngram_hashes(tokens, min(self.candidate_ngram, len(tokens))) if tokens else ():
                    self._posts_by_gram.setdefault(gram, []).append(i)
        tokens = words(sample)
        found: set[int] = set()
        for n in range(1, self.candidate_ngram + 1):  # shorter posts are found by their whole run
            for gram in _ngram_hashes(tokens, n):
                found.update(self._posts_by_gram.get(gram, ()))
        return found

    def post_vectors(self) -> np.ndarray:
        """Embeddings of the training posts ([len(posts), 384]), computed (or read from the cache) once."""
        if self._post_vectors is None:
            self._post_vectors = (self._embedder or _cached_embedder(keep=True))(self.posts)
        return self._post_vectors

    def copy_flags(self, samples: list[str]) -> list[bool]:
        """Per sample: is it a copy of a training post by either test?"""
        by_ngram = self.ngram_copies(samples)
        # only embed the samples the cheap test did not already catch
        rest = [i for i, flag in enumerate(by_ngram) if not flag]
        for i, flag in zip(rest, self.embedding_copies([samples[i] for i in rest]), strict=True):
            by_ngram[i] = flag
        return by_ngram

    def copy_rate(self, samples: list[str]) -> float:
        """Share of samples that copy a training post (0.0 for no samples)."""
        return float(np.mean(self.copy_flags(samples))) if samples else 0.0


def word_ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of a word list, in order, repeats included."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: list[str], n: int) -> float:
    """Unique word n-grams / total word n-grams over all samples (0.0 when there are none)."""
    grams = [g for t in map(words, samples) for g in word_ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def novelty(sample: str, seen: set[tuple[str, ...]]) -> float:
    """Share of the sample's word bigrams that are new: neither in `seen` (the bigrams of other texts)
    nor earlier in the sample itself; 1.0 for a sample without a bigram. A set's distinct-2 is the
    length-weighted mean of its texts' novelty against the texts before them."""
    grams = word_ngrams(words(sample), 2)
    if not grams:
        return 1.0
    fresh, own = 0, set()
    for gram in grams:
        fresh += gram not in seen and gram not in own
        own.add(gram)
    return fresh / len(grams)


def bigram_set(texts: list[str]) -> set[tuple[str, ...]]:
    """Every word bigram of the texts (what `novelty` measures against)."""
    return {gram for t in map(words, texts) for gram in word_ngrams(t, 2)}


class StyleProbe:
    """Measures how close samples sit to the channel's recent style.

    In: held-out (recent) posts, whose embedding centroid is the target, and reference posts
    (e.g. training posts) whose mean cosine to that centroid is what real posts score.
    """

    def __init__(self, heldout: list[str], reference: list[str], *, embedder: Embedder | None = None):
        self._embed = embedder or _cached_embedder(keep=False)
        posts_embed = embedder or _cached_embedder(keep=True)  # real posts: kept for the next run
        centroid = posts_embed(heldout).mean(axis=0)
        self.centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
        self.reference = float((posts_embed(reference) @ self.centroid).mean()) if reference else 0.0

    def similarity(self, samples: list[str]) -> float:
        """Mean cosine of the samples' embeddings to the held-out centroid (0.0 for none)."""
        if not samples:
            return 0.0
        return float((self._embed(samples) @ self.centroid).mean())


def guard_metrics(samples: list[str], copy_index: CopyIndex, style: StyleProbe | None = None) -> dict[str, float]:
    """All guard figures for one set of samples, named as training logs them."""
    metrics = {
        "copy_rate": copy_index.copy_rate(samples),
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "mean_words": float(np.mean([len(words(s)) for s in samples])) if samples else 0.0,
    }
    if style is not None:
        metrics["style_similarity"] = style.similarity(samples)
        metrics["style_reference"] = style.reference
    return metrics
